"""The relay process on PostgreSQL (by --db URL alone): the happy path and a restart."""
from __future__ import annotations

from pathlib import Path

from eth_utils import keccak

from crynux_common import scores
from relay_client.client import RelayClient, ResultUpload

from .helpers import RelayProcess
from .network import Network, image_args, png


def test_relayProcess_onPostgres_deliversAndSurvivesRestart(network: Network, postgres, tmp_path: Path):
    db_url = postgres.create_database("relay_process")
    relay = RelayProcess(rpc=network.rpc_url, deployment=network.write_deployment(tmp_path / "d.json"),
                         data=tmp_path / "data", key=network.relay_key, db_url=db_url).start()
    try:
        assert not (tmp_path / "data" / "relay.sqlite3").exists()
        creator = RelayClient(relay.url, network.local(network.creator))
        args = image_args(network.next_seed(), 1)
        creator.put_args(args)
        task_id = network.create_task(args, num_images=1)
        executor = network.executor(task_id)
        node = RelayClient(relay.url, network.local(executor))
        assert node.get_task_args(task_id) == args
        files = [ResultUpload("0.png", png(77))]
        score, salt = scores.image_score([files[0].data]), scores.new_salt()
        network.commit(task_id, executor, score, salt)
        assert node.upload_results(task_id, files, score, salt).attestation.state == "mined"

        relay.kill()
        relay.start()
        assert creator.download_results(task_id) == [files[0].data]
        assert creator.get_own_args(keccak(args)) == args
        assert RelayClient(relay.url).stats().storage.deliveries == 1
    finally:
        relay.stop()
