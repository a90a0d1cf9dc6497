"""The clients people reach for, against the running stack (never a mock of it): the Python SDK
(sync and async), the `darkroom` CLI in a pseudo-terminal, the TypeScript client under node, and
the MCP server over streamable HTTP and stdio."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

import darkroom_client as dc
from darkroom_client.types import WIRE_TYPES
from ops import keys
from tests.e2e.conftest import Stack, darkroom_command
from tests.support import wait_for_sync

SMALL = {"steps": 4, "size": "64x64", "seed": 7}


def png_ok(data: bytes, size: int = 64) -> None:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG" and image.size == (size, size)


def progressed(events) -> list[tuple[str, int, int]]:
    return [(e.data["phase"], e.data["step"], e.data["total_steps"]) for e in events if e.type == "job.progressed"]


# -- Python SDK -----------------------------------------------------------------------------------

def test_sdk_types_match_the_servers_openapi_components(stack: Stack) -> None:
    """Every SDK struct the OpenAPI document names has the same properties and required fields."""
    components = httpx.get(f"{stack.url}/schema/openapi.json", timeout=10).json()["components"]["schemas"]
    import msgspec

    compared = 0
    for kind in WIRE_TYPES:
        if kind.__name__ not in components:
            continue
        schema = components[kind.__name__]
        fields = msgspec.structs.fields(kind)
        assert {f.encode_name for f in fields} == set(schema.get("properties", {})), kind.__name__
        assert {f.encode_name for f in fields if f.required} == set(schema.get("required", [])), kind.__name__
        compared += 1
    assert compared >= 15  # the bodies of the routes the SDK calls


def test_sdk_generates_with_progress_at_every_step_and_downloads(stack: Stack, tmp_path: Path) -> None:
    seen: list[dc.JobProgress] = []
    steps: list[tuple[str, int, int]] = []

    def on_progress(progress: dc.JobProgress) -> None:
        seen.append(progress)
        if progress.event is not None and progress.event.type == "job.progressed":
            steps.append((progress.phase, progress.step, progress.total_steps))

    with dc.Client(stack.url, stack.token) as darkroom:
        job = darkroom.generate("a red fox", num_images=2, on_progress=on_progress, output_dir=tmp_path, **SMALL)
        assert job.status == "completed" and len(job.images) == 2
        # The callback saw every progress event the server published, in order, through the last step.
        logged = progressed(darkroom.events(job.id))
        assert steps == logged and steps, (steps, logged)
        assert [s for phase, s, _ in steps if phase == "generating"][-1] == 4
        assert seen[0].phase == "queued" and seen[-1].phase == "completed" and seen[-1].fraction == 1.0
        files = sorted(tmp_path.glob("*.png"))
        assert [f.stem for f in files] == sorted(image.id for image in job.images)
        for file in files:
            png_ok(file.read_bytes())
        # Auto-pagination: one item a page still finds everything.
        assert job.id in [j.id for j in darkroom.jobs(page_size=1, limit=50)]
        # The gallery reads the projection, which trails the event log by milliseconds.
        wait_for_sync(lambda: {image.id for image in job.images}
                      <= {image.id for image in darkroom.gallery(page_size=1, limit=10)},
                      timeout=30, interval=0.2, what="the job's images in the gallery, one per page")
        assert darkroom.quota().usage is not None
        assert darkroom.models().default in darkroom.models().models
        assert darkroom.enrich("a fox").original_prompt == "a fox"
        assert list(darkroom.loras(limit=5)) is not None


def test_sdk_errors_are_typed_and_carry_the_api_message(stack: Stack) -> None:
    with dc.Client(stack.url, stack.token) as darkroom:
        with pytest.raises(dc.BadRequest) as bad:
            darkroom.submit("a red fox", steps=0)
        assert bad.value.status_code == 400 and "num_inference_steps" in bad.value.message
        with pytest.raises(dc.NotFound):
            darkroom.job("0" * 32)
    with dc.Client(stack.url, "drk_nope_nope") as stranger, pytest.raises(dc.Unauthorized):
        stranger.quota()


def test_sdk_idempotency_key_returns_the_same_job(stack: Stack) -> None:
    with dc.Client(stack.url, stack.token) as darkroom:
        first = darkroom.submit("a red fox", idempotency_key="same-fox-1", **SMALL)
        again = darkroom.submit("a red fox", idempotency_key="same-fox-1", **SMALL)
        assert first.id == again.id
        with pytest.raises(dc.Conflict):
            darkroom.submit("a blue fox", idempotency_key="same-fox-1", **SMALL)
        darkroom.wait(first.id, timeout=120)


def test_sdk_retries_429_after_retry_after(stack: Stack) -> None:
    _, token = keys.create(stack.data_dir / "state", "sdk-rate", rate="1/second")
    with dc.Client(stack.url, token, retries=0) as impatient:
        impatient.submit("a red fox", **SMALL)
        with pytest.raises(dc.RateLimited) as limited:
            impatient.submit("a red fox", **SMALL)
        assert limited.value.retry_after and "rate limit" in limited.value.message
    with dc.Client(stack.url, token) as patient:
        started = time.monotonic()
        patient.submit("a red fox", **SMALL)  # answered 429 first, then accepted after Retry-After
        assert time.monotonic() - started >= 0.5


def test_sdk_wait_falls_back_to_polling(stack: Stack) -> None:
    phases = []
    with dc.Client(stack.url, stack.token) as darkroom:
        created = darkroom.submit("a red fox", **SMALL)
        job = darkroom.wait(created.id, use_events=False, poll_interval=0.05, on_progress=lambda p: phases.append(p.phase))
    assert job.status == "completed" and phases[-1] == "completed"


async def test_async_sdk_generates_streams_and_cancels(stack: Stack, tmp_path: Path) -> None:
    steps: list[int] = []

    async def on_progress(progress: dc.JobProgress) -> None:
        if progress.event is not None and progress.event.type == "job.progressed":
            steps.append(progress.step)

    async with dc.AsyncClient(stack.url, stack.token) as darkroom:
        job = await darkroom.generate("a red fox", on_progress=on_progress, output_dir=tmp_path, **SMALL)
        assert job.status == "completed"
        logged = [e async for e in darkroom.events(job.id)]
        assert steps == [step for _, step, _ in progressed(logged)] and steps[-1] == 4
        assert logged[0].type == "job.accepted" and logged[-1].type == "job.completed"
        png_ok(await darkroom.download(job.images[0]))
        assert job.id in [j.id async for j in darkroom.jobs(page_size=2, limit=20)]
        # Cancel a long job once it is running: wait() raises JobCancelled.
        slow = await darkroom.submit("a slow fox", steps=50, size="256x256")
        waiter = asyncio.create_task(darkroom.wait(slow.id, timeout=120))
        async for event in darkroom.events(slow.id):
            if event.type == "job.progressed":
                break
        answer = await darkroom.cancel(slow.id)
        assert answer.status in ("cancelled", "cancelling")
        with pytest.raises(dc.JobCancelled):
            await waiter
        with pytest.raises(dc.BadRequest):
            await darkroom.submit("a red fox", size="64x64", num_images=99)


# -- the `darkroom` CLI -----------------------------------------------------------------------------

def cli_env(stack: Stack, tmp_path: Path, *, with_env: bool = True) -> dict[str, str]:
    """The CLI's environment: the stack by DARKROOM_URL / DARKROOM_API_KEY (or, without them, by a
    config file), and a config home of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env |= {"XDG_CONFIG_HOME": str(tmp_path / "config"), "TERM": "xterm-256color", "COLUMNS": "120"}
    if with_env:
        env |= {"DARKROOM_URL": stack.url, "DARKROOM_API_KEY": stack.token}
    return env


def run_in_pty(command: list[str], env: dict[str, str], *, interrupt_when=None,
               timeout: float = 180) -> tuple[int, str]:
    """Run `command` on a pseudo-terminal (as a person would) and return its exit status and
    everything it drew; type Ctrl-C once `interrupt_when(output)` says so."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal is its controlling tty
        try:
            os.execvpe(command[0], command, env)
        finally:
            os._exit(127)
    output, interrupted, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            if interrupt_when is not None and not interrupted and interrupt_when(output.decode(errors="replace")):
                os.write(fd, b"\x03")  # Ctrl-C: the terminal sends SIGINT to the foreground process
                interrupted = True
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"{command} did not finish in {timeout} s:\n{output.decode(errors='replace')[-3000:]}")
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def plain(text: str) -> str:
    """Terminal output without colours and cursor moves, one drawn frame a line."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", text).replace("\r", "\n")


def drawn_steps(text: str, total: int) -> set[int]:
    """The steps the progress bar showed while generating (`generating ... 7/12 ...`)."""
    return {int(step) for line in plain(text).splitlines() if line.lstrip().startswith("generating")
            for step in re.findall(rf"\b(\d+)/{total}\b", line)}


def test_cli_generate_draws_live_progress_and_saves_the_images(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = run_in_pty([*darkroom_command(), "generate", "a red fox", "--steps", "12", "--size", "64x64",
                               "-n", "2", "--seed", "7", "-o", str(out)], cli_env(stack, tmp_path))
    text = plain(output)
    assert code == 0, output[-3000:]
    drawn = drawn_steps(output, 12)
    assert len(drawn) >= 2 and 12 in drawn, text[-3000:]  # the bar advanced to the last step
    assert "it/s" in text and "ETA" in text
    saved = re.findall(r"saved (\S+\.png)", text)
    assert len(saved) == 2
    for path in saved:
        png_ok(Path(path).read_bytes())
    assert sorted(Path(p).name for p in saved) == sorted(p.name for p in out.glob("*.png"))


def test_cli_ctrl_c_cancels_the_job(stack: Stack, tmp_path: Path) -> None:
    code, output = run_in_pty([*darkroom_command(), "generate", "a slow fox", "--steps", "50", "--size", "256x256",
                               "-o", str(tmp_path)], cli_env(stack, tmp_path),
                              interrupt_when=lambda text: drawn_steps(text, 50) - {0})
    text = plain(output)
    assert code == 130, text[-3000:]
    job_id = re.search(r"job (\S+) queued", text).group(1)
    assert f"interrupted: job {job_id} cancel" in text
    with dc.Client(stack.url, stack.token) as darkroom:
        assert darkroom.wait(job_id, timeout=60, raise_on_failure=False).status == "cancelled"
    assert not list(tmp_path.glob("*.png"))


def test_cli_failure_exits_non_zero_with_the_servers_message(stack: Stack, tmp_path: Path) -> None:
    code, output = run_in_pty([*darkroom_command(), "generate", "a red fox", "--steps", "2", "--size", "63x64"],
                              cli_env(stack, tmp_path))
    assert code == 1 and "darkroom generate:" in plain(output) and "width" in plain(output), output


def test_cli_listings_as_json_with_the_key_from_the_config_file(stack: Stack, tmp_path: Path) -> None:
    env = cli_env(stack, tmp_path, with_env=False)
    config = tmp_path / "config" / "darkroom" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'url = "{stack.url}"\napi_key = "{stack.token}"\n')
    with dc.Client(stack.url, stack.token) as darkroom:
        job = darkroom.generate("a cli fox", **SMALL)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*darkroom_command(), *args], env=env, capture_output=True, text=True, timeout=60)

    jobs = json.loads(run("jobs", "--json", "--limit", "50").stdout)
    assert job.id in [j["id"] for j in jobs]
    gallery = json.loads(run("gallery", "--json", "--search", "cli fox").stdout)
    assert job.images[0].id in [image["id"] for image in gallery]
    assert "usage" in json.loads(run("quota", "--json").stdout)
    assert isinstance(json.loads(run("loras", "search", "fox", "--json").stdout), list)
    assert "quota" in run("quota").stdout  # a table
    ended = run("cancel", job.id)
    assert (ended.returncode == 1 and "already" in ended.stderr.lower()) or "ended" in ended.stderr.lower(), ended.stderr
    stranger = run("quota", "--api-key", "drk_nope_nope")
    assert stranger.returncode == 1 and "401" in stranger.stderr


# -- MCP ----------------------------------------------------------------------------------------------

async def drive_mcp(client_factory, *, steps: int = 6) -> None:
    """List the tools, call generate_image with progress, and the read-only tools."""
    from mcp.types import ImageContent, TextContent

    async with client_factory() as mcp:
        tools = {tool.name for tool in (await mcp.list_tools()).tools}
        assert {"generate_image", "get_job", "list_models", "search_loras", "enrich_prompt", "gallery_search"} <= tools
        progress: list[tuple[float, float | None, str | None]] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append((value, total, message))

        result = await mcp.call_tool("generate_image", {"prompt": "an mcp fox", "steps": steps, "width": 64,
                                                        "height": 64, "seed": 3}, progress_callback=on_progress)
        assert not result.is_error, result
        images = [c for c in result.content if isinstance(c, ImageContent)]
        assert len(images) == 1 and images[0].mime_type == "image/png"
        png_ok(base64.b64decode(images[0].data))
        summary = json.loads(next(c.text for c in result.content if isinstance(c, TextContent)))
        assert summary["image_urls"][0].endswith(f"/v1/images/{summary['job_id']}_1") or summary["image_urls"]
        assert progress and progress[-1][0] == progress[-1][1] == steps, progress
        assert [p[0] for p in progress] == sorted(p[0] for p in progress)
        job = await mcp.call_tool("get_job", {"job_id": summary["job_id"]})
        assert job.structured_content["status"] == "completed"
        models = await mcp.call_tool("list_models", {})
        assert models.structured_content["default"] in models.structured_content["models"]
        found = await mcp.call_tool("gallery_search", {"search": "mcp fox"})
        assert summary["job_id"] in [image["job_id"] for image in found.structured_content["images"]]
        assert "loras" in (await mcp.call_tool("search_loras", {"query": "fox"})).structured_content
        enriched = await mcp.call_tool("enrich_prompt", {"prompt": "a fox"})
        assert enriched.structured_content["original_prompt"] == "a fox"
        bad = await mcp.call_tool("generate_image", {"prompt": "x", "width": 63})
        assert bad.is_error and "width" in bad.content[0].text


async def test_mcp_over_streamable_http(stack: Stack) -> None:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    def connect(token: str | None = stack.token):
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"} if token else {})
        return Client(streamable_http_client(f"{stack.url}/mcp", http_client=http))

    await drive_mcp(connect)
    async with httpx.AsyncClient(timeout=10) as anonymous:  # no key, no MCP
        answer = await anonymous.post(f"{stack.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert answer.status_code == 401 and "API key" in answer.json()["message"]


async def test_mcp_over_stdio(stack: Stack, tmp_path: Path) -> None:
    from mcp import Client, StdioServerParameters

    command = darkroom_command()
    env = cli_env(stack, tmp_path)
    await drive_mcp(lambda: Client(StdioServerParameters(command=command[0], args=[*command[1:], "mcp"], env=env)))


# -- TypeScript -----------------------------------------------------------------------------------------

TYPESCRIPT = Path(__file__).resolve().parents[2] / "clients" / "typescript"


def npm(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess:
    if not (TYPESCRIPT / "node_modules").is_dir():
        pytest.fail("clients/typescript has no node_modules: run `npm ci` there (.ci/run does)")
    environment = os.environ | {"DARKROOM_URL": stack.url, "DARKROOM_API_KEY": stack.token} | env
    return subprocess.run(["npm", *args], cwd=TYPESCRIPT, env=environment, capture_output=True, text=True, timeout=600)


def test_typescript_types_are_what_the_running_server_generates(stack: Stack, tmp_path: Path) -> None:
    """`just ts-types` (npm run generate) against this server reproduces the committed schema.d.ts."""
    generated = tmp_path / "schema.d.ts"
    result = npm(stack, "run", "--silent", "generate", SCHEMA_OUT=str(generated))
    assert result.returncode == 0, result.stdout + result.stderr
    committed = (TYPESCRIPT / "src" / "schema.d.ts").read_text()
    assert generated.read_text() == committed, "the API changed: run `just ts-types` and commit schema.d.ts"


def test_typescript_client_under_node(stack: Stack) -> None:
    result = npm(stack, "test")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    assert "# fail 0" in result.stdout and "# pass 3" in result.stdout, result.stdout[-3000:]
