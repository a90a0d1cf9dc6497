"""A fake Hugging Face Hub on loopback (what huggingface_hub 2.4 asks for with HF_ENDPOINT set to
it), which also serves plain files for URL pulls. It can drop a connection half-way through a
file once, and announce a wrong sha256, to test resuming and verification."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt")


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Path] = {}
        self.plain: dict[str, Path] = {}  # /files/<name> -> file
        self.drop_once: dict[str, int] = {}  # path served -> bytes sent before the connection drops
        self.wrong_sha: set[str] = set()  # repo paths whose announced sha256 is wrong
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.serve(self, head=True)

            def do_GET(self) -> None:
                hub.serve(self, head=False)

            def do_POST(self) -> None:
                hub.serve(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_repo(self, repo: str, folder: Path) -> None:
        self.repos[repo] = folder

    def add_file(self, name: str, path: Path) -> str:
        self.plain[name] = path
        return f"{self.url}/files/{name}"

    # -- serving ---------------------------------------------------------------------------------------

    def _siblings(self, repo: str) -> list[dict]:
        folder = self.repos[repo]
        out = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            name = path.relative_to(folder).as_posix()
            item = {"rfilename": name, "size": path.stat().st_size, "blobId": hashlib.sha1(name.encode()).hexdigest()}
            if name.endswith(LFS_SUFFIXES):
                item["lfs"] = {"sha256": self.sha256(repo, name), "size": path.stat().st_size, "pointerSize": 134}
            out.append(item)
        return out

    def sha256(self, repo: str, name: str) -> str:
        digest = hashlib.sha256((self.repos[repo] / name).read_bytes()).hexdigest()
        return "f" * 64 if f"{repo}/{name}" in self.wrong_sha else digest

    def serve(self, handler: BaseHTTPRequestHandler, head: bool) -> None:
        path = handler.path.split("?")[0]
        self.requests.append((handler.command, path, handler.headers.get("Range")))
        if path.startswith("/api/models/"):
            rest = path.removeprefix("/api/models/")
            repo = next((r for r in self.repos if rest == r or rest.startswith(r + "/")), None)
            if repo is None:
                return self._json(handler, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            tail = rest[len(repo):]
            if tail.startswith("/paths-info"):
                return self._json(handler, 200, [])
            if tail.startswith("/refs"):
                return self._json(handler, 200, {"branches": [{"name": "main", "ref": "refs/heads/main",
                                                               "targetCommit": COMMIT}], "tags": [], "converts": []})
            return self._json(handler, 200, {"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                             "siblings": self._siblings(repo)})
        match = re.match(r"^/(.+?)/resolve/([^/]+)/(.+)$", path)
        if match and match.group(1) in self.repos:
            repo, name = match.group(1), match.group(3)
            file = self.repos[repo] / name
            if not file.is_file():
                return self._json(handler, 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.md5(name.encode()).hexdigest()}"'}
            if name.endswith(LFS_SUFFIXES):
                headers |= {"X-Linked-Etag": f'"{self.sha256(repo, name)}"', "X-Linked-Size": str(file.stat().st_size)}
            return self._file(handler, file, f"{repo}/{name}", headers, head)
        if path.startswith("/files/") and path.removeprefix("/files/") in self.plain:
            name = path.removeprefix("/files/")
            return self._file(handler, self.plain[name], f"files/{name}", {}, head)
        return self._json(handler, 404, {"error": "not found"})

    def _json(self, handler, status: int, body: object, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        for key, value in {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _file(self, handler, file: Path, key: str, headers: dict, head: bool) -> None:
        data = file.read_bytes()
        start = 0
        match = re.match(r"bytes=(\d+)-$", handler.headers.get("Range") or "")
        if match:
            start = int(match.group(1))
            if start >= len(data):
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(data)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            handler.send_response(200)
        handler.send_header("Content-Length", str(len(data) - start))
        handler.send_header("Accept-Ranges", "bytes")
        for k, v in headers.items():
            handler.send_header(k, v)
        handler.end_headers()
        if head:
            return
        body = data[start:]
        drop = self.drop_once.pop(key, None) if not head else None
        if drop is not None and drop - start < len(body):
            handler.wfile.write(body[: max(drop - start, 0)])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(2)  # mid-body: the client sees a short read
            return
        handler.wfile.write(body)


def write_safetensors(path: Path, tensors: dict[str, int], *, seed: int = 0) -> Path:
    """A valid safetensors file of float32 tensors (name -> element count) with random bytes."""
    import os

    header, offset = {}, 0
    for name, count in tensors.items():
        header[name] = {"dtype": "F32", "shape": [count], "data_offsets": [offset, offset + 4 * count]}
        offset += 4 * count
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.write(len(raw).to_bytes(8, "little") + raw)
        out.write(os.urandom(offset))
    return path
