"""The bare endpoint the ingress is compared with: Litestar that only publishes with a confirm.

    python -m ops.bench.bare_ingress --port 8001 --amqp URL --exchange NAME

Same server (uvicorn[standard]), same framework, same confirm-per-request publish; no validation,
no job document, no catalog. GET /v1/jobs/{id} returns a job document's bytes from --jobs-dir,
with no id checks. What the ingress adds on top of this is its own cost.
"""

from __future__ import annotations

import argparse
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import aio_pika
import uvicorn
from litestar import Litestar, Request, Response, get, post

from services.bus import connect_robust


def create_app(amqp_url: str, exchange_name: str, jobs_dir: Path) -> Litestar:
    state: dict = {}

    @asynccontextmanager
    async def lifespan(_app: Litestar):
        connection = await connect_robust(amqp_url, name="bench-bare-ingress")
        channel = await connection.channel(publisher_confirms=True)
        state["exchange"] = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.FANOUT, auto_delete=True)
        # Like-for-like with Darkroom: a durable quorum queue, so a confirm means the broker fsynced.
        queue = await channel.declare_queue(exchange_name, durable=True, arguments={"x-queue-type": "quorum"})
        await queue.bind(state["exchange"])
        yield
        await queue.delete(if_unused=False, if_empty=False)
        await connection.close()

    @post("/v1/jobs", status_code=202)
    async def accept(request: Request) -> dict:
        body = await request.body()
        job_id = str(uuid.uuid4())
        await state["exchange"].publish(
            aio_pika.Message(body, message_id=job_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=""
        )
        return {"id": job_id, "status": "pending"}

    @get("/v1/jobs/{job_id:str}")
    async def read(job_id: str) -> Response:
        return Response((jobs_dir / f"{job_id}.json").read_bytes(), media_type="application/json")

    @get("/")
    async def index() -> str:
        return "bare"

    return Litestar([accept, read, index], lifespan=[lifespan], logging_config=None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--amqp", required=True)
    parser.add_argument("--exchange", default="bench.bare")
    parser.add_argument("--jobs-dir", type=Path, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(args.amqp, args.exchange, args.jobs_dir), host="127.0.0.1", port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
