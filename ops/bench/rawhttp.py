"""A lean HTTP/1.1 client for open-loop load: keep-alive connections, request bytes built once per
call, Content-Length answers only. httpx spent 4-12 ms of CPU per POST here, as much as the
ingress it was measuring, on a machine whose cores the stack needs."""

from __future__ import annotations

import asyncio
import json


class RawClient:
    """POSTs JSON to one host over at most `connections` reused connections."""

    def __init__(self, url: str, headers: dict[str, str], connections: int):
        scheme, _, rest = url.partition("://")
        if scheme != "http":
            raise ValueError(f"RawClient speaks plain http only, got {url!r}")
        self.host, _, port = rest.rstrip("/").partition(":")
        self.port = int(port or 80)
        self.headers = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.connections = connections
        self._idle: asyncio.LifoQueue = asyncio.LifoQueue()
        self._open = 0

    async def post_json(self, path: str, payload: object) -> tuple[int, dict]:
        """(status, decoded JSON answer); OSError or ConnectionError when the connection fails."""
        body = json.dumps(payload).encode()
        request = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.headers}"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        reader, writer = await self._acquire()
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                elif name.strip().lower() == b"transfer-encoding":
                    raise ConnectionError("chunked answers are not supported")
            answer = await reader.readexactly(length) if length else b""
        except BaseException:
            writer.close()
            self._open -= 1
            raise
        self._idle.put_nowait((reader, writer))
        return status, json.loads(answer) if answer else {}

    async def _acquire(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An idle connection the server has not closed (uvicorn closes one idle for 5 s), or a new one."""
        while not self._idle.empty():
            reader, writer = self._idle.get_nowait()
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
            self._open -= 1
        if self._open < self.connections:
            self._open += 1
            try:
                return await asyncio.open_connection(self.host, self.port)
            except BaseException:
                self._open -= 1
                raise
        return await self._idle.get()

    async def close(self) -> None:
        while not self._idle.empty():
            _, writer = self._idle.get_nowait()
            writer.close()
