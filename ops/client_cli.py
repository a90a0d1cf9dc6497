"""The `darkroom` client commands (`generate`, `jobs`, `gallery`, `cancel`, `loras`, `quota`,
`mcp`): thin wrappers over the Python SDK (`clients/python`), with rich progress and tables.
The server is found by --url/--api-key, then DARKROOM_URL / DARKROOM_API_KEY, then
~/.config/darkroom/config.toml."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_INTERRUPTED = 130


def _client(args: argparse.Namespace):
    from darkroom_client import Client

    return Client(args.url, args.api_key)


def _print_json(value: Any) -> None:
    import msgspec

    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


def _fail(command: str, message: str, code: int = 1) -> int:
    from rich.console import Console

    Console(stderr=True).print(f"[red]darkroom {command}:[/red] {message}", highlight=False, markup=True)
    return code


def guarded(command: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """The SDK's errors as one line on stderr with the server's message, and exit status 1."""
    def wrap(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        def guarded_run(args: argparse.Namespace) -> int:
            from darkroom_client import APIError, DarkroomError

            try:
                return run(args)
            except APIError as exc:
                return _fail(command, f"{exc.message} (HTTP {exc.status_code})")
            except DarkroomError as exc:
                return _fail(command, str(exc))
        return guarded_run
    return wrap


# -- generate ---------------------------------------------------------------------------------------

@guarded("generate")
def cmd_generate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from darkroom_client import JobCancelled, JobFailed

    console = Console(stderr=True)
    options = {key: value for key, value in {
        "model": args.model, "steps": args.steps, "size": args.size, "num_images": args.num_images,
        "seed": args.seed, "negative_prompt": args.negative, "guidance_scale": args.guidance,
        "sampler": args.sampler, "style": args.style, "session": args.session, "preset": args.preset,
    }.items() if value is not None}
    with _client(args) as darkroom:
        created = darkroom.submit(args.prompt, loras=args.lora or (), **options)
        console.print(f"job {created.id} queued ({created.num_images} image(s))", highlight=False)
        columns = (TextColumn("{task.fields[phase]:<13}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f}"),
                   TextColumn("{task.fields[speed]}"), TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn())
        try:
            with Progress(*columns, console=console, transient=False) as bar:
                task = bar.add_task("job", total=1, phase="queued", speed="  - it/s", eta="-")

                def on_progress(p) -> None:
                    label = p.phase if p.total_images in (None, 1) else f"{p.phase} {p.image_index}/{p.total_images}"
                    bar.update(task, completed=p.step, total=p.total_steps or 1, phase=label,
                               speed=f"{p.rate:5.1f} it/s" if p.rate else "  - it/s",
                               eta=f"{p.eta_seconds:.0f}s" if p.eta_seconds is not None else "-", refresh=True)

                job = darkroom.wait(created.id, on_progress=on_progress)
        except KeyboardInterrupt:
            answer = darkroom.cancel(created.id)
            console.print(f"interrupted: job {created.id} {answer.status}", highlight=False)
            return EXIT_INTERRUPTED
        except (JobFailed, JobCancelled) as exc:
            if args.json:
                _print_json(exc.job)
            return _fail("generate", f"job {exc.job.id} {exc.job.status}: {exc.job.error or exc.job.message}")
        paths = darkroom.download_images(job, Path(args.output))
    if args.json:
        _print_json({"job": job, "files": [str(path) for path in paths]})
    else:
        for path in paths:
            print(f"saved {path}")
    return 0


# -- listings ---------------------------------------------------------------------------------------

def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if value is None else str(value) for value in row))
    Console().print(table)


@guarded("jobs")
def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as darkroom:
        found = list(darkroom.jobs(status=args.status, model=args.model, limit=args.limit))
    if args.json:
        _print_json(found)
    else:
        _table("jobs", ["id", "status", "model", "images", "created", "prompt"],
               [[j.id, j.status, j.model, j.num_images, f"{j.created_at:%Y-%m-%d %H:%M:%S}", j.prompt[:60]] for j in found])
    return 0


@guarded("gallery")
def cmd_gallery(args: argparse.Namespace) -> int:
    with _client(args) as darkroom:
        found = list(darkroom.gallery(search=args.search, model=args.model, limit=args.limit))
        if args.output:
            for image in found:
                darkroom.download(image, Path(args.output) / f"{image.id}.png")
    if args.json:
        _print_json(found)
    else:
        _table("gallery", ["id", "model", "size", "seed", "created", "prompt"],
               [[i.id, i.model_id, f"{i.width}x{i.height}", i.seed, f"{i.created_at:%Y-%m-%d %H:%M:%S}", i.prompt[:60]]
                for i in found])
    return 0


@guarded("cancel")
def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as darkroom:
        answer = darkroom.cancel(args.id)
    _print_json(answer) if args.json else print(f"{answer.id}: {answer.status} ({answer.message})")
    return 0


@guarded("loras")
def cmd_loras(args: argparse.Namespace) -> int:
    with _client(args) as darkroom:
        found = list(darkroom.loras(args.query, base=args.base, limit=args.limit))
    if args.json:
        _print_json(found)
    else:
        _table("loras", ["name", "base", "score", "trigger words", "tags"],
               [[lo.name, lo.base, f"{lo.score:.0f}" if lo.score is not None else "", ", ".join(lo.trigger_words[:4]),
                 ", ".join(lo.tags[:4])] for lo in found])
    return 0


@guarded("quota")
def cmd_quota(args: argparse.Namespace) -> int:
    with _client(args) as darkroom:
        quota = darkroom.quota()
    if args.json:
        _print_json(quota)
    else:
        _table("quota" + (" (premium)" if quota.is_premium else ""), ["quota", "used", "limit", "remaining"],
               [[name, quota.usage.get(name), quota.limits.get(name), quota.remaining.get(name)] for name in quota.limits])
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    from services.ingress.mcp import run_stdio

    run_stdio(args.url, args.api_key)
    return 0


# -- the parser ---------------------------------------------------------------------------------------

def add_client_commands(sub: Any) -> None:
    """Register the client commands on `darkroom`'s subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the server (default: DARKROOM_URL, config file, http://127.0.0.1:8000)")
    common.add_argument("--api-key", help="drk_... (default: DARKROOM_API_KEY, then ~/.config/darkroom/config.toml)")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of a table")

    gen = sub.add_parser("generate", parents=[common, as_json], help="generate images, with live progress")
    gen.add_argument("prompt")
    gen.add_argument("--model", help="model id (darkroom: GET /v1/models)")
    gen.add_argument("--steps", type=int)
    gen.add_argument("--size", help="WIDTHxHEIGHT, e.g. 512x512")
    gen.add_argument("-n", "--num-images", type=int)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--negative", help="negative prompt")
    gen.add_argument("--guidance", type=float)
    gen.add_argument("--sampler")
    gen.add_argument("--style")
    gen.add_argument("--session")
    gen.add_argument("--preset")
    gen.add_argument("--lora", action="append", metavar="NAME:WEIGHT", help="repeatable")
    gen.add_argument("-o", "--output", default=".", help="folder for the images (default: here)")
    gen.set_defaults(func=cmd_generate)

    jobs = sub.add_parser("jobs", parents=[common, as_json], help="your jobs, newest first")
    jobs.add_argument("--status", choices=("pending", "processing", "completed", "failed", "cancelled"))
    jobs.add_argument("--model")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.set_defaults(func=cmd_jobs)

    gallery = sub.add_parser("gallery", parents=[common, as_json], help="images, newest first, with search")
    gallery.add_argument("--search")
    gallery.add_argument("--model")
    gallery.add_argument("--limit", type=int, default=20)
    gallery.add_argument("-o", "--output", help="also download them into this folder")
    gallery.set_defaults(func=cmd_gallery)

    cancel = sub.add_parser("cancel", parents=[common, as_json], help="cancel a job")
    cancel.add_argument("id")
    cancel.set_defaults(func=cmd_cancel)

    loras = sub.add_parser("loras", help="the LoRA library")
    loras_sub = loras.add_subparsers(dest="loras_command", required=True)
    search = loras_sub.add_parser("search", parents=[common, as_json], help="search LoRAs (typos ok)")
    search.add_argument("query", nargs="?")
    search.add_argument("--base", choices=("sd1", "sd2", "sdxl", "sd3", "flux", "unknown"))
    search.add_argument("--limit", type=int, default=20)
    search.set_defaults(func=cmd_loras)

    quota = sub.add_parser("quota", parents=[common, as_json], help="this key's usage and limits")
    quota.set_defaults(func=cmd_quota)

    mcp = sub.add_parser("mcp", parents=[common], help="an MCP server on stdin/stdout, for AI assistants")
    mcp.set_defaults(func=cmd_mcp)
