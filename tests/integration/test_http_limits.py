"""The HTTP server's read limits (attack report F3, F16): oversized headers are refused, slow headers
and slow bodies are cut off, and a normal client is not affected. A real uvicorn process serving
a small Litestar app through `services.ingress.server.serve`, with short deadlines."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from ops.broker import free_port, port_open
from tests.support import wait_for_sync

APP = """
from litestar import Litestar, post, get
from schemas.settings import Settings
from services.ingress.server import serve

@get("/ping")
async def ping() -> dict:
    return {"ok": True}

@post("/echo")
async def echo(data: dict) -> dict:
    return data

serve(Litestar([ping, echo]), Settings(port={port}, header_timeout=1.0, body_timeout=1.5, max_header_bytes=8192))
"""


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", APP.replace("{port}", str(port))])
    try:
        wait_for_sync(lambda: port_open(port), timeout=30, what="the test server")
        yield port
    finally:
        process.terminate()
        process.wait(10)


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for more than {timeout} s") from None
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def test_f3_oversized_headers_are_refused_with_431(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000)
        answer = _read_all(sock, 5)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"exceed 8192 bytes" in answer
    # Many small headers add up the same way.
    headers = {f"x-h{i}": "v" * 20 for i in range(1000)}
    assert httpx.get(f"http://127.0.0.1:{server}/ping", headers=headers).status_code == 431


def test_f16_slow_headers_are_cut_off(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        sock.sendall(b"X-Slow: 1\r\n")
        answer = _read_all(sock, 10)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 5


def test_f16_slow_bodies_are_cut_off(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        answer = _read_all(sock, 10)
    assert b"408" in answer.split(b"\r\n", 1)[0] or answer == b"", answer[:200]


def test_normal_requests_and_keep_alive_still_work(server: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{server}") as client:
        for n in range(3):
            assert client.post("/echo", json={"n": n, "pad": "x" * 200_000}).json()["n"] == n
        assert client.get("/ping", headers={"X-Fine": "y" * 4000}).json() == {"ok": True}


def test_f3_a_refused_request_with_a_body_leaves_the_server_serving(server: int) -> None:
    headers = {f"x-h{i}": "v" * 20 for i in range(1000)}
    answer = httpx.post(f"http://127.0.0.1:{server}/echo", headers=headers, json={"a": 1})
    assert answer.status_code == 431
    assert httpx.get(f"http://127.0.0.1:{server}/ping").json() == {"ok": True}


def test_a_request_that_is_not_http_gets_a_json_400_naming_what_was_wrong(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\ncontent-length: R43_PGK\r\n\r\n")
        answer = _read_all(sock, 5)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body) == {"status": "error",
                                "message": "malformed HTTP request: Invalid character in Content-Length"}
    # The server goes on serving.
    assert httpx.get(f"http://127.0.0.1:{server}/ping").json() == {"ok": True}
