"""`darkroom ops dead-letters list|replay`: what could not be processed, why, and sending it back.

Parked messages keep their body and say where they came from and why (our headers, or
RabbitMQ's `x-death`: `schemas.topology.parked_origin`). Replaying a generation command revives
its failed job as a new attempt (`job.requeued`, replay). Everything is sent through the `Bus`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import aio_pika
import msgspec

from schemas.events import AnyCommand, AnyEvent, GenerateImages, JobRequeued, command_for_attempt
from schemas.settings import Settings
from schemas.topology import Topology, parked_origin, unparked_headers
from services.bus import Bus, encoder
from services.runtime import broker_url

_decoder = msgspec.json.Decoder(AnyEvent | AnyCommand)
CONNECT_TIMEOUT = 10.0


@dataclass
class Parked:
    message_id: str | None
    queue: str
    kind: str
    job_id: str | None
    reason: str
    body: bytes
    headers: dict


def amqp_url(settings: Settings) -> str:
    """DARKROOM_AMQP_URL (with its TLS files), else the private broker that `darkroom run` started
    for this data dir."""
    if settings.amqp_url:
        return broker_url(settings)
    written = settings.data_path / "rabbitmq" / "url"
    if written.exists():
        return written.read_text().strip()
    raise SystemExit("no broker: set DARKROOM_AMQP_URL, or start Darkroom with `just run` first")


def describe(message: aio_pika.abc.AbstractIncomingMessage) -> Parked:
    headers = dict(message.headers or {})
    origin = parked_origin(headers)
    try:
        item = _decoder.decode(message.body)
        kind, job_id = type(item).__struct_config__.tag, item.job_id
    except msgspec.MsgspecError:
        kind, job_id = message.type or "undecodable", None
    return Parked(
        message_id=message.message_id,
        queue=origin.queue or "?",
        kind=str(kind),
        job_id=job_id,
        reason=origin.reason or (f"broker: {origin.broker_reason or '?'} after "
                                 f"{'?' if origin.deliveries is None else origin.deliveries} deliveries"),
        body=message.body,
        headers=headers,
    )


async def _collect(channel, queue_name: str) -> list[tuple[aio_pika.abc.AbstractIncomingMessage, Parked]]:
    queue = await channel.get_queue(queue_name, ensure=False)
    found = []
    while (message := await queue.get(no_ack=False, fail=False)) is not None:
        found.append((message, describe(message)))
    return found


async def list_parked(url: str, topology: Topology) -> list[Parked]:
    bus = await Bus.connect(url, topology, name="darkroom-ops", timeout=CONNECT_TIMEOUT)
    try:
        channel = await bus.connection.channel()
        return [parked for _, parked in await _collect(channel, topology.dead_letters)]
        # closing the channel hands every message back, unacked and untouched
    finally:
        await bus.close()


async def replay(url: str, topology: Topology, message_ids: set[str] | None) -> list[Parked]:
    """Send parked messages (all, or those with the given ids) back to the queue they came from."""
    bus = await Bus.connect(url, topology, name="darkroom-ops", timeout=CONNECT_TIMEOUT)
    replayed = []
    try:
        channel = await bus.connection.channel()
        for message, parked in await _collect(channel, topology.dead_letters):
            if message_ids is not None and parked.message_id not in message_ids:
                continue
            body = parked.body
            item = None
            try:
                item = _decoder.decode(body)
            except msgspec.MsgspecError:
                pass
            if isinstance(item, GenerateImages):
                item = command_for_attempt(item, item.attempt + 1)
                body = encoder.encode(item)
                await bus.publish(JobRequeued(job_id=item.job_id, attempt=item.attempt, reason="replayed by an operator",
                                              replay=True))
            await bus.send_back(body, parked.queue, message_id=parked.message_id, kind=message.type,
                                headers=unparked_headers(parked.headers))
            await message.ack()
            replayed.append(parked)
    finally:
        await bus.close()
    return replayed


def print_parked(parked: list[Parked], as_json: bool) -> None:
    if as_json:
        print(json.dumps([{k: v for k, v in vars(p).items() if k not in ("body", "headers")} for p in parked], indent=2))
        return
    if not parked:
        print("no dead letters")
        return
    for p in parked:
        print(f"{p.message_id or '-':36}  {p.queue:28}  {p.kind:18}  job {p.job_id or '-'}\n    {p.reason}")
    print(f"{len(parked)} dead letter(s)")


def run_list(url: str, topology: Topology, as_json: bool) -> None:
    print_parked(asyncio.run(list_parked(url, topology)), as_json)


def run_replay(url: str, topology: Topology, ids: list[str], replay_all: bool) -> None:
    if not ids and not replay_all:
        raise SystemExit("name the message ids to replay (see `darkroom ops dead-letters list`), or pass --all")
    done = asyncio.run(replay(url, topology, None if replay_all else set(ids)))
    print(f"replayed {len(done)} message(s)" + "".join(f"\n  {p.kind} job {p.job_id} -> {p.queue}" for p in done))
