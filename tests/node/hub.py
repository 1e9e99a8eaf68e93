"""A local stand-in for the Hugging Face Hub (the few routes huggingface_hub uses to list and
download a model), recording every request, so that tests can see what a node fetches.

    hub = FakeHub({"org/name": {"config.json": b"{}", "model.safetensors": b"..."}})
    hub.start(); ...; hub.requests  # [("GET", "/api/models/org/name/revision/main"), ...]

`declared_sizes` overrides the size the API lists for a file (a file that is never fetched
may claim any size); files listed with content None are listed but cannot be downloaded.
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

COMMIT = "c" * 40


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]], declared_sizes: dict[str, int] | None = None):
        self.repos = repos
        self.declared_sizes = declared_sizes or {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, body=False)

            def do_GET(self) -> None:
                hub._handle(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def fetched_files(self) -> list[str]:
        """The file paths (repo/filename) whose content was requested (GET on /resolve/)."""
        out = []
        for method, path in self.requests:
            if method == "GET" and "/resolve/" in path:
                repo, _, rest = path.lstrip("/").partition("/resolve/")
                out.append(f"{repo}/{rest.partition('/')[2]}")
        return out

    # --- routes ---------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        with self._lock:
            self.requests.append((h.command, path))
        if path.startswith("/api/models/"):
            repo = path.removeprefix("/api/models/").split("/revision/")[0]
            if repo not in self.repos:
                return _send(h, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            siblings = [
                {"rfilename": name, "size": self.declared_sizes.get(f"{repo}/{name}", len(data or b""))}
                for name, data in self.repos[repo].items()
            ]
            doc = {"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "siblings": siblings}
            return _send(h, 200, json.dumps(doc).encode(), {"Content-Type": "application/json"}, body=body)
        repo, sep, rest = path.lstrip("/").partition("/resolve/")
        if sep:
            filename = rest.partition("/")[2]
            data = self.repos.get(repo, {}).get(filename)
            if data is None:
                return _send(h, 404, b"not found", {"X-Error-Code": "EntryNotFound"}, body=body)
            headers = {
                "X-Repo-Commit": COMMIT,
                "ETag": '"' + hashlib.sha256(data).hexdigest() + '"',
                "Content-Type": "application/octet-stream",
            }
            return _send(h, 200, data, headers, body=body)
        _send(h, 404, b"no route", {}, body=body)


def _send(h: BaseHTTPRequestHandler, code: int, data: bytes, headers: dict[str, str], *, body: bool = True) -> None:
    h.send_response(code)
    for k, v in headers.items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    if body:
        h.wfile.write(data)
