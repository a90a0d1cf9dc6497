"""The bare diffusers loop Darkroom is compared with: one process, one pipeline, no Darkroom code.

    python -m ops.bench.baseline MODEL_DIR --images 50 --warmup 5 --size 64 --steps 4 [--batch 4]
    python -m ops.bench.baseline MODEL_DIR --serve

The first prints one JSON object: per-call seconds (each call makes `batch` images), peak RSS.
With --serve it reads one JSON request a line on stdin ({"seed", "size", "steps", "batch"}) and
answers each with {"seconds": ...}, so a bench can interleave bare calls with Darkroom jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    parser.add_argument("--serve", action="store_true", help="answer requests on stdin (see above)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (float16 there, as Darkroom's default)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        args.model, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    if args.device != "cpu":
        pipe.to(args.device, torch.float16)

    def call(first_seed: int, size: int = args.size, steps: int = args.steps, batch: int = args.batch) -> float:
        seeds = range(first_seed, first_seed + batch)
        started = time.perf_counter()
        with torch.inference_mode():
            pipe(
                prompt=["a red fox"] * batch, num_inference_steps=steps, guidance_scale=args.guidance,
                width=size, height=size, output_type="pil",
                generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
            )
        return time.perf_counter() - started

    if args.serve:
        print(json.dumps({"ready": True, "threads": torch.get_num_threads()}), flush=True)
        for line in sys.stdin:
            request = json.loads(line)
            seconds = call(request["seed"], request.get("size", args.size), request.get("steps", args.steps),
                           request.get("batch", 1))
            print(json.dumps({"seconds": seconds, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}), flush=True)
        return

    for n in range(args.warmup):
        call(args.seed + n)
    calls = max(1, args.images // args.batch)
    times = [call(args.seed + n * args.batch) for n in range(calls)]
    print(json.dumps({
        "seconds_per_call": times,
        "images_per_call": args.batch,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
