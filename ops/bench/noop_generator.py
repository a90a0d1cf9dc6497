"""A generator that does no generation: for measuring the control plane (broker, enricher, saver,
recorder) without diffusers in the way.

    python -m ops.bench.noop_generator --amqp URL --namespace NS

It consumes GenerateImages like the real generator (the generator queue and, for affinity
routing, the queue of the model the bench's jobs use) and answers with job.started and one
image.generated per image carrying a fixed 1x1 PNG, each published with a confirm.
"""

from __future__ import annotations

import argparse
import asyncio
import base64

import aio_pika
import msgspec

from schemas.catalog import TINY_MODEL_ID
from schemas.events import AnyCommand, GenerateImages, ImageGenerated, JobStarted
from schemas.jobs import ImageMetadata
from schemas.layout import image_id
from schemas.topology import Topology
from services.bus import connect_robust, declare_model_queue

PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)


async def run(url: str, namespace: str, model: str = TINY_MODEL_ID) -> None:
    topo = Topology(namespace)
    decoder = msgspec.json.Decoder(AnyCommand)
    encoder = msgspec.json.Encoder()
    connection = await connect_robust(url, name="bench-noop-generator")
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=64)
    events = await channel.get_exchange(topo.events, ensure=True)
    queue = await channel.get_queue(topo.queue("generator"), ensure=True)
    model_queue = await declare_model_queue(channel, topo, model)

    async def publish(event) -> None:
        tag = type(event).__struct_config__.tag
        await events.publish(aio_pika.Message(encoder.encode(event), delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=tag)

    async def on_command(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        command: GenerateImages = decoder.decode(message.body)
        spec = command.spec
        await publish(JobStarted(job_id=command.job_id, worker="noop", attempt=command.attempt))
        for number in range(1, spec.settings.num_images + 1):
            await publish(ImageGenerated(
                job_id=command.job_id, image_id=image_id(command.job_id, number), image_number=number,
                total_images=spec.settings.num_images, job_created_at=command.created_at, attempt=command.attempt,
                worker="noop", width=1, height=1, png=PIXEL,
                metadata=ImageMetadata(job_id=command.job_id, model_id=spec.model, prompt=spec.prompt,
                                       settings=spec.settings, seed=spec.settings.seed + number - 1,
                                       image_number=number, total_images=spec.settings.num_images),
            ))
        await message.ack()

    await queue.consume(on_command)
    await model_queue.consume(on_command)
    await asyncio.Future()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--amqp", required=True)
    parser.add_argument("--namespace", required=True)
    args = parser.parse_args()
    asyncio.run(run(args.amqp, args.namespace))


if __name__ == "__main__":
    main()
