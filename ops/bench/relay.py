"""One hop of the broker baseline: consume a queue, republish each message with a confirm, ack.

    python -m ops.bench.relay --amqp URL --source Q1 --target Q2

A chain of these is raw RabbitMQ doing the same hops as Darkroom's stages with no work at all.
"""

from __future__ import annotations

import argparse
import asyncio

import aio_pika

from services.bus import connect_robust


async def run(url: str, source: str, target: str) -> None:
    connection = await connect_robust(url, name="bench-relay")
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=64)
    queue = await channel.declare_queue(source, durable=True, arguments={"x-queue-type": "quorum"})
    await channel.declare_queue(target, durable=True, arguments={"x-queue-type": "quorum"})

    async def relay(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await channel.default_exchange.publish(
            aio_pika.Message(message.body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=target
        )
        await message.ack()

    await queue.consume(relay)
    await asyncio.Future()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--amqp", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    args = parser.parse_args()
    asyncio.run(run(args.amqp, args.source, args.target))


if __name__ == "__main__":
    main()
