"""``crynux-relay``: run the relay service.

    crynux-relay serve --rpc http://127.0.0.1:8545 --deployment deployment.json --data ./relay-data \\
        [--db postgresql://user@host/db] [--s3-bucket B --s3-endpoint URL ...] \\
        [--key-file relay.key | env CRYNUX_RELAY_KEY] [--host 127.0.0.1 --port 8080]
    crynux-relay prune --older-than DAYS --rpc URL --deployment deployment.json --data ./relay-data \\
        [--db URL] [--s3-bucket B ...]

The relay's key (a hex private key) signs ``attestDelivery``; the market must have granted
its address RELAY_ROLE. Without ``--db`` the database is SQLite in ``DATA/relay.sqlite3``;
without ``--s3-bucket`` blobs are files in ``DATA/blobs``. S3 credentials come from the
usual AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or the options.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("crynux_relay")

KEY_ENV = "CRYNUX_RELAY_KEY"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crynux-relay", description="The Crynux relay service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--rpc", required=True, help="JSON-RPC URL of the chain")
    serve.add_argument("--deployment", required=True, type=Path, help="deployment JSON (contract addresses)")
    serve.add_argument("--build-dir", type=Path, default=Path(".build"),
                       help="Ape build folder with the compiled ABIs, when the deployment file has none")
    serve.add_argument("--data", required=True, type=Path, help="folder for the SQLite database and blobs")
    serve.add_argument("--db", help="SQLAlchemy database URL (default: SQLite in DATA)")
    serve.add_argument("--s3-bucket", help="store blobs in this S3 bucket instead of DATA/blobs")
    serve.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (MinIO, Ceph ...)")
    serve.add_argument("--s3-prefix", default="", help="key prefix inside the bucket")
    serve.add_argument("--s3-region", default=None)
    serve.add_argument("--s3-access-key", default=os.environ.get("AWS_ACCESS_KEY_ID"))
    serve.add_argument("--s3-secret-key", default=os.environ.get("AWS_SECRET_ACCESS_KEY"))
    serve.add_argument("--s3-create-bucket", action="store_true", help="create the bucket if missing")
    serve.add_argument("--key-file", type=Path, help=f"file holding the relay's hex private key (or env {KEY_ENV})")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--signature-window", type=int, default=60, help="accepted clock skew, seconds")
    serve.add_argument("--attest-wait", type=float, default=30.0,
                       help="seconds an upload waits for its attestation to be mined before answering 202")
    serve.add_argument("--args-grace", type=float, default=30.0,
                       help="seconds after a task's start (chain time) its creator may still upload the "
                            "arguments; later its nodes are told they never came (410) and commit the "
                            "error score")
    serve.add_argument("--gc-grace", type=float, default=0.0,
                       help="only delete unreferenced blobs older than this at startup (shared stores)")
    serve.add_argument("--log-level", default="info")
    _add_ops_serve_args(serve)
    _add_prune_parser(sub)
    add_admission_options(serve)
    return parser


def _add_ops_serve_args(serve: argparse.ArgumentParser) -> None:
    from .server.funds import DEFAULT_WARN_BELOW
    from .storage.repository import DEFAULT_LOCK_TIMEOUT_S

    serve.add_argument("--db-lock-timeout", type=float, default=DEFAULT_LOCK_TIMEOUT_S,
                       help="seconds a database write waits for a lock held elsewhere before the request is "
                            "answered 503 (SQLite busy timeout, PostgreSQL lock_timeout)")
    serve.add_argument("--gas-warn-attestations", type=int, default=DEFAULT_WARN_BELOW,
                       help="log a warning when the relay account's ETH pays for fewer delivery attestations "
                            "than this")


def _add_prune_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    prune = sub.add_parser(
        "prune", help="delete old results and arguments (safe while the relay serves)",
        description="Deletes the results of deliveries attested more than DAYS ago, and arguments last "
                    "used more than DAYS ago whose tasks are all final on-chain. Safe to run (e.g. daily "
                    "from cron) while the relay serves the same database and blob store.",
    )
    prune.add_argument("--older-than", required=True, type=float, metavar="DAYS", help="age in days (> 0)")
    prune.add_argument("--rpc", required=True, help="JSON-RPC URL of the chain (to check that tasks are final)")
    prune.add_argument("--deployment", required=True, type=Path, help="deployment JSON (contract addresses)")
    prune.add_argument("--build-dir", type=Path, default=Path(".build"))
    prune.add_argument("--data", required=True, type=Path, help="the relay's data folder")
    prune.add_argument("--db", help="SQLAlchemy database URL (default: SQLite in DATA)")
    prune.add_argument("--s3-bucket")
    prune.add_argument("--s3-endpoint")
    prune.add_argument("--s3-prefix", default="")
    prune.add_argument("--s3-region", default=None)
    prune.add_argument("--s3-access-key", default=os.environ.get("AWS_ACCESS_KEY_ID"))
    prune.add_argument("--s3-secret-key", default=os.environ.get("AWS_SECRET_ACCESS_KEY"))
    prune.add_argument("--log-level", default="warning")


def prune(args: argparse.Namespace) -> int:
    from crynux_common.enums import TaskStatus

    from .chain import ChainError, DeploymentError, Web3TaskChain, load_deployment
    from .storage import LocalBlobStore, Repository, S3BlobStore, StorageError, Store
    from .storage.prune import TaskFacts, prune as run_prune

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if not args.older_than > 0:
        log.error("--older-than must be a positive number of days")
        return 2
    try:
        chain = Web3TaskChain(args.rpc, load_deployment(args.deployment, args.build_dir), None)
    except DeploymentError as exc:
        log.error("%s", exc)
        return 2
    data: Path = args.data
    db_url = args.db or f"sqlite:///{(data / 'relay.sqlite3').resolve()}"
    if not args.db and not (data / "relay.sqlite3").is_file():
        log.error("no relay database in %s (give --data or --db)", data)
        return 2
    repo = Repository.connect(db_url)
    if args.s3_bucket:
        blobs = S3BlobStore(
            args.s3_bucket, prefix=args.s3_prefix, endpoint_url=args.s3_endpoint, region=args.s3_region,
            access_key=args.s3_access_key, secret_key=args.s3_secret_key,
        )
    else:
        blobs = LocalBlobStore(data / "blobs")

    def facts(task_id: int) -> TaskFacts | None:
        task = chain.get_task(task_id)
        if task is None:
            return None
        return TaskFacts("0x" + task.args_hash.hex(), task.creator, TaskStatus(task.status).is_final)

    try:
        report = run_prune(Store(repo, blobs), args.older_than * 86400.0, facts)
    except (StorageError, ChainError) as exc:
        log.error("prune stopped: %s", exc)
        return 1
    finally:
        repo.close()
    print(f"crynux-relay prune --older-than {args.older_than:g}: {report.summary()}")
    return 0 if report.chain_error is None else 1


def add_admission_options(serve: argparse.ArgumentParser) -> None:
    """Limits checked before a request body is read (relay_client.server.guard)."""
    from .server.settings import MiB, RelaySettings

    d = {name: f.default for name, f in RelaySettings.model_fields.items()}
    g = serve.add_argument_group("admission limits (per client IP, per signer, bodies in flight)")
    g.add_argument("--body-budget-mib", type=float, default=d["max_inflight_body_bytes"] / MiB,
                   help="MiB of request bodies received at once, all clients together (over it: 503)")
    g.add_argument("--body-grace", type=float, default=d["body_grace_s"],
                   help="seconds a body may take before the minimum rate applies")
    g.add_argument("--body-min-rate", type=int, default=d["body_min_rate_bytes_s"],
                   help="bytes/s a body must average after the grace (else 408, connection closed)")
    g.add_argument("--max-uploads-per-signer", type=int, default=d["max_uploads_per_signer"])
    g.add_argument("--max-uploads-per-ip", type=int, default=d["max_uploads_per_ip"])
    g.add_argument("--ip-rate", type=float, default=d["ip_rate_per_s"],
                   help="requests/s per client IP without valid signature headers (public routes too)")
    g.add_argument("--ip-burst", type=int, default=d["ip_burst"])
    g.add_argument("--auth-fail-rate", type=float, default=d["auth_fail_rate_per_s"],
                   help="failed signature verifications/s per client IP")
    g.add_argument("--auth-fail-burst", type=int, default=d["auth_fail_burst"])
    g.add_argument("--signer-rate", type=float, default=d["signer_rate_per_s"],
                   help="authenticated requests/s per signer")
    g.add_argument("--signer-burst", type=int, default=d["signer_burst"])
    g.add_argument("--refusal-delay", type=float, default=d["refusal_delay_s"],
                   help="seconds a 429 for a rate is held before it is sent (tarpit; 0: at once)")


def admission_settings(args: argparse.Namespace) -> dict[str, float | int]:
    from .server.settings import MiB

    return {
        "max_inflight_body_bytes": int(args.body_budget_mib * MiB), "body_grace_s": args.body_grace,
        "body_min_rate_bytes_s": args.body_min_rate, "max_uploads_per_signer": args.max_uploads_per_signer,
        "max_uploads_per_ip": args.max_uploads_per_ip, "ip_rate_per_s": args.ip_rate,
        "ip_burst": args.ip_burst, "auth_fail_rate_per_s": args.auth_fail_rate,
        "auth_fail_burst": args.auth_fail_burst, "signer_rate_per_s": args.signer_rate,
        "signer_burst": args.signer_burst, "refusal_delay_s": args.refusal_delay,
    }


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .chain import DeploymentError, Web3TaskChain, load_account, load_deployment
    from .server import RelaySettings, create_app
    from .storage import LocalBlobStore, Repository, S3BlobStore, Store

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        deployment = load_deployment(args.deployment, args.build_dir)
    except DeploymentError as exc:
        log.error("%s", exc)
        return 2
    account = load_account(args.key_file, os.environ.get(KEY_ENV))
    if account is None:
        log.warning("no relay key (--key-file or %s): deliveries will be stored but never attested", KEY_ENV)
    data: Path = args.data
    data.mkdir(parents=True, exist_ok=True)
    db_url = args.db or f"sqlite:///{(data / 'relay.sqlite3').resolve()}"
    repo = Repository.connect(db_url, lock_timeout_s=args.db_lock_timeout)
    if args.s3_bucket:
        blobs = S3BlobStore(
            args.s3_bucket, prefix=args.s3_prefix, endpoint_url=args.s3_endpoint, region=args.s3_region,
            access_key=args.s3_access_key, secret_key=args.s3_secret_key, create_bucket=args.s3_create_bucket,
        )
    else:
        blobs = LocalBlobStore(data / "blobs")
    chain = Web3TaskChain(args.rpc, deployment, account)
    try:
        if chain.has_relay_role() is False:
            log.error("the relay %s does not hold RELAY_ROLE on the market: attestations will be retried "
                      "until governance grants it", chain.relay_address)
    except Exception as exc:  # the chain may be down at startup; the relay serves anyway
        log.warning("cannot check RELAY_ROLE now: %s", exc)
    settings = RelaySettings(
        signature_window_s=args.signature_window, attest_wait_s=args.attest_wait, gc_grace_s=args.gc_grace,
        args_grace_s=args.args_grace, **admission_settings(args),
    )
    app = create_app(chain, Store(repo, blobs), settings)
    app.state.relay.attestor.funds.warn_below = args.gas_warn_attestations
    log.info(
        "relay %s serving %s on http://%s:%d; database %s; blobs: %s",
        account.address if account else "(no key)", chain.describe(), args.host, args.port,
        repo.engine.url.render_as_string(hide_password=True), blobs.describe(),
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), workers=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "prune":
        return prune(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
