"""The bus against a real RabbitMQ: confirms, routing, dead letters, redelivery."""

from __future__ import annotations

import asyncio

import aio_pika
import msgspec
import pytest

from schemas.events import JobFailed
from schemas.topology import QUEUE_HEADER, REASON_HEADER
from services.bus import BrokerUnavailable, Bus, event_decoder
from tests.support import wait_for


async def dead_letters(bus: Bus, expected: int, timeout: float = 10.0) -> list[aio_pika.abc.AbstractIncomingMessage]:
    channel = await bus.connection.channel()
    queue = await channel.get_queue(bus.topology.dead_letters, ensure=False)
    found = []

    async def fetch():
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            found.append(message)
        return len(found) >= expected

    deadline = asyncio.get_running_loop().time() + timeout
    while not await fetch():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"expected {expected} dead letters, found {len(found)}")
        await asyncio.sleep(0.05)
    return found


async def publish_raw(bus: Bus, routing_key: str, body: bytes) -> None:
    channel = await bus.connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(bus.topology.events, ensure=False)
    await exchange.publish(aio_pika.Message(body), routing_key=routing_key)
    await channel.close()


async def test_published_events_reach_every_bound_queue(bus, tap):
    await bus.publish(JobFailed(job_id="j1", reason="boom"))
    [event] = await tap.wait(JobFailed, "j1")
    assert event.reason == "boom"
    # The recorder's queue takes every event, durably, even before the recorder runs.
    channel = await bus.connection.channel()
    recorder = await channel.declare_queue(bus.topology.queue("recorder"), passive=True)
    assert recorder.declaration_result.message_count == 1


async def test_unroutable_commands_raise_instead_of_vanishing(bus):
    channel = await bus.connection.channel()
    await channel.queue_delete(bus.topology.queue("generator"))
    bus.routing = "shared"

    with pytest.raises(BrokerUnavailable, match="generate_images"):
        await bus.send(a_generate_command())


def a_generate_command(model: str = "tiny-sd"):
    from schemas.events import GenerateImages
    from tests.unit.test_events import SPEC

    return GenerateImages(job_id="j1", spec=msgspec.structs.replace(SPEC, model=model),
                          created_at=msgspec.json.decode(b'"2026-01-01T00:00:00Z"', type=__import__("datetime").datetime))


async def test_under_affinity_a_job_goes_to_its_models_queue_declared_on_first_send(bus):
    name = bus.topology.model_queue("my model/v2")
    await bus.send(a_generate_command("my model/v2"))
    await bus.send(a_generate_command("my model/v2"))
    assert (await bus.queue_depths([name, bus.topology.queue("generator")])) == {
        name: (2, 0), bus.topology.queue("generator"): (0, 0)}
    channel = await bus.connection.channel()
    await channel.queue_delete(name)  # an operator deleted it: the send raises, the next one declares it again
    with pytest.raises(BrokerUnavailable, match="generate_images"):
        await bus.send(a_generate_command("my model/v2"))
    await bus.send(a_generate_command("my model/v2"))
    assert (await bus.queue_depths([name]))[name] == (1, 0)
    await channel.queue_delete(name)


async def test_undecodable_and_failing_messages_are_dead_lettered_and_consuming_goes_on(bus):
    handled, failed = [], []

    async def handle(event):
        if event.reason == "explode":
            raise RuntimeError("handler blew up")
        handled.append(event)

    async def on_failure(event, error):
        failed.append((event.job_id, str(error)))

    await bus.consume("saver", handle, decoder=event_decoder, on_failure=on_failure)
    await publish_raw(bus, "image.generated", b"this is not json")
    await publish_raw(bus, "image.generated", msgspec.json.encode(JobFailed(job_id="j2", reason="explode")))
    await publish_raw(bus, "image.generated", msgspec.json.encode(JobFailed(job_id="j3", reason="fine")))

    await wait_for(lambda: handled, what="the good message to be handled after two bad ones")
    assert handled[0].job_id == "j3"
    assert failed == [("j2", "handler blew up")]
    letters = await dead_letters(bus, 2)
    reasons = sorted(letter.headers[REASON_HEADER] for letter in letters)
    assert reasons[0] == "RuntimeError: handler blew up"
    assert reasons[1].startswith("undecodable: ")
    assert {letter.headers[QUEUE_HEADER] for letter in letters} == {bus.topology.queue("saver")}
    assert b"this is not json" in {letter.body for letter in letters}


async def test_a_message_that_kills_its_consumer_is_dead_lettered_after_the_delivery_limit(bus):
    """A consumer that dies without acking (a crash) gets the message back, up to the limit."""
    await publish_raw(bus, "image.generated", msgspec.json.encode(JobFailed(job_id="poison", reason="x")))
    deliveries = 0
    for _ in range(10):
        channel = await bus.connection.channel()
        queue = await channel.get_queue(bus.topology.queue("saver"), ensure=False)
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            await channel.close()
            break
        deliveries += 1
        await channel.close()  # like a crash: never acked, the broker redelivers
    [letter] = await dead_letters(bus, 1)
    assert b"poison" in letter.body
    assert deliveries == 6  # the first delivery plus DELIVERY_LIMIT redeliveries


async def test_consumers_come_back_after_the_broker_restarts(tmp_path):
    """A private broker of this test's own, stopped and started: stage consumers and followers resume."""
    from ops.broker import PrivateBroker
    from schemas.topology import Topology

    broker = PrivateBroker(tmp_path / "rabbitmq", name="restart-test").start()
    bus = await Bus.connect(broker.url, Topology("restart"), name="test")
    try:
        handled, followed = [], []

        async def handle(event):
            handled.append(event.job_id)

        async def follow(event):
            followed.append(event.job_id)

        await bus.consume("saver", handle, decoder=event_decoder)
        await bus.subscribe(["job.failed"], follow, name="follow")
        await publish_raw(bus, "image.generated", msgspec.json.encode(JobFailed(job_id="before", reason="x")))
        await wait_for(lambda: handled == ["before"])
        await asyncio.to_thread(broker.restart)
        await wait_for(lambda: bus.connected, timeout=45)
        for _ in range(60):  # publishing may need a moment until the channels are restored
            try:
                await publish_raw(bus, "image.generated", msgspec.json.encode(JobFailed(job_id="after", reason="x")))
                break
            except Exception:  # noqa: BLE001
                await asyncio.sleep(0.5)
        # aio-pika retries every 5 s; restoring channels and consumers follows the reconnect.
        await wait_for(lambda: "after" in handled, timeout=45, what="the stage consumer to resume")
        # A follower's queue is exclusive: it exists again only once restored, and hears only
        # what is published after that, so keep publishing until it hears.
        for _ in range(90):
            try:
                await bus.publish(JobFailed(job_id="event-after", reason="x"))
            except BrokerUnavailable:  # a channel still being restored says so; callers retry
                await asyncio.sleep(0.5)
                continue
            if "event-after" in followed:
                break
            await asyncio.sleep(0.5)
        assert "event-after" in followed, "the follower resumed"
    finally:
        await bus.close()
        broker.stop()
