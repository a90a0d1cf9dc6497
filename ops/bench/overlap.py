"""The generator's worker on its own, overlapped or not: the same jobs through the real
Renderer and Worker with a bus that only encodes events and waits ~1 ms per confirm, so the
figure is the generator's and not the rest of the stack's. Modes take turns, round after round,
so a shared machine's noise falls on all of them alike.

    python -m ops.bench.overlap MODEL_DIR [--device cpu] [--jobs 32] [--rounds 8] [--size 64] [--steps 4]

Prints one JSON object: images/s per round and mode, and each overlapped mode's median ratio to
`off` over the rounds (paired).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

# mode -> (overlap, decode in the second thread)
MODES = {"off": (False, False), "on": (True, False), "on-split-decode": (True, True)}


class _Bus:
    def __init__(self) -> None:
        import msgspec

        self.encoder = msgspec.json.Encoder()

    async def publish(self, event) -> None:
        self.encoder.encode(event)
        await asyncio.sleep(0.001)  # a confirm on a local broker

    def publish_soon(self, event) -> None:
        self.encoder.encode(event)

    async def send(self, command) -> None:
        pass


async def _run(args: argparse.Namespace) -> dict:
    from pipelines.loader import ModelCache, configure_threads, resolve_device
    from pipelines.warmup import prepare
    from schemas.catalog import ModelDefaults, ModelEntry
    from schemas.events import GenerateImages
    from schemas.jobs import GenerationSettings, JobSpec
    from services.generator.progress import ProgressSettings
    from services.generator.render import Renderer
    from services.generator.worker import Options, Worker

    model_dir = args.model
    device = resolve_device(args.device)
    configure_threads(0, device)
    entry = ModelEntry(id="bench", source=model_dir, family="sd1.x",
                       dtype="float32" if device.type == "cpu" else "auto",
                       defaults=ModelDefaults(width=args.size, height=args.size))
    cache = ModelCache(64 * 1024**3, args.device, prepare=prepare)
    cache.load(entry)

    class Catalog:
        def model(self, name):
            return entry

    workers = {}
    for name, (overlap, split) in MODES.items():
        render = Renderer(lora_folder=Path(args.model) / "loras", capacity=args.batch, split_decode=split,
                          progress=ProgressSettings(rate=4.0, preview_every=5))
        worker = Worker(bus=_Bus(), catalog=Catalog(), cache=cache, render=render, worker_id="bench",
                        options=Options(max_batch=args.batch, overlap=overlap))
        asyncio.get_running_loop().create_task(worker.batcher.run())
        workers[name] = worker
    settings = GenerationSettings(num_images=1, num_inference_steps=args.steps, guidance_scale=7.5,
                                  width=args.size, height=args.size, seed=0)
    seed = 0

    def command(seed: int) -> GenerateImages:
        spec = JobSpec(prompt="a red fox", model="bench", settings=msgspec_replace(settings, seed=seed))
        return GenerateImages(job_id=f"bench-{seed}", spec=spec, created_at=datetime.now(UTC))

    rates: dict[str, list[float]] = {name: [] for name in MODES}
    for round_ in range(args.rounds + 1):  # round 0 warms every mode up
        for name, worker in workers.items():
            started = time.perf_counter()
            await asyncio.gather(*(worker.batcher.submit(command(seed + n)) for n in range(args.jobs)))
            seed += args.jobs
            if round_:
                rates[name].append(args.jobs / (time.perf_counter() - started))
    return {
        "device": str(device), "jobs": args.jobs, "batch": args.batch, "size": args.size, "steps": args.steps,
        "images_per_s": {name: [round(r, 3) for r in values] for name, values in rates.items()},
        "median_images_per_s": {name: round(statistics.median(values), 3) for name, values in rates.items()},
        "paired_ratio_to_off": {
            name: round(statistics.median([a / b for a, b in zip(rates[name], rates["off"], strict=True)]), 3)
            for name in MODES if name != "off"
        },
    }


def msgspec_replace(struct, **changes):
    import msgspec

    return msgspec.structs.replace(struct, **changes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    args.model = os.path.abspath(args.model)
    print(json.dumps(asyncio.run(_run(args))))


if __name__ == "__main__":
    main()
