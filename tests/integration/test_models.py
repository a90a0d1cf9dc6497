"""The models stage against a fake Hugging Face Hub on loopback (HF_ENDPOINT), with the real broker,
the real tiny diffusers model and a running generator that is never restarted."""

from __future__ import annotations

import hashlib
import shutil
import tomllib
import uuid
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from schemas.events import (
    ImageGenerated,
    JobFailed,
    ModelAvailable,
    ModelPullFailed,
    ModelPullProgressed,
    ModelPullStarted,
    ModelRemoved,
    PullModel,
    RemovalResult,
    RemoveModel,
)
from schemas.jobs import JobDocument, JobSpec
from schemas.layout import DataLayout
from services.generator.main import main as generator_main
from services.ingress.app import create_app
from services.jobfiles import JobFiles
from services.models.main import main as models_main
from tests.integration.test_generator import command as generate_command
from tests.models_support import FakeHub, write_safetensors
from tests.support import running, wait_for

MiB = 1024**2


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield fake


@pytest.fixture
def stage_settings(with_tiny_model):
    return msgspec.structs.replace(with_tiny_model, models_disk_reserve=0)


@pytest.fixture
def hub_repo(tmp_path, second_model) -> Path:
    """A diffusers repo as the Hub has them: the pipeline plus files Darkroom must not fetch."""
    repo = shutil.copytree(second_model, tmp_path / "repo-tiny-b")
    (repo / "README.md").write_text("# tiny-b\n")
    (repo / "v1-5-pruned.ckpt").write_bytes(b"pickled" * 100)
    shutil.copy(repo / "unet" / "diffusion_pytorch_model.safetensors", repo / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    write_safetensors(repo / "safety_checker" / "model.safetensors", {"w": 1000})
    return repo


def runtime_catalog(settings) -> dict:
    path = DataLayout(settings.data_dir).runtime_catalog
    return tomllib.loads(path.read_text()) if path.exists() else {}


def pending_job(settings, model: str) -> str:
    """A pending job naming `model`, as the ingress and the recorder leave it (document + queue.txt)."""
    job_id = str(uuid.uuid4())
    spec = generate_command(job_id, model=model).spec
    layout = DataLayout(settings.data_dir)
    JobFiles(layout).write(JobDocument.new(job_id, JobSpec(**msgspec.structs.asdict(spec)), datetime.now(UTC)))
    layout.queue_file.write_text(f"{job_id}\n")
    return job_id


async def test_a_hub_pull_shows_progress_a_running_generator_uses_it_and_removal_waits_for_jobs(
        stage_settings, bus, tap, hub, hub_repo):
    hub.add_repo("acme/tiny-b", hub_repo)
    settings = stage_settings
    async with running(generator_main, settings, "generator", bus), running(models_main, settings, "models", bus):
        pull = PullModel(source="acme/tiny-b")
        await bus.send(pull)
        available = (await tap.wait(ModelAvailable, timeout=60))[0]
        assert tap.of(ModelPullFailed) == []
        started = tap.of(ModelPullStarted)[0]
        progress = [e.done_bytes for e in tap.of(ModelPullProgressed) if e.pull_id == pull.command_id]
        assert started.pull_id == available.pull_id == pull.command_id and started.model == "tiny-b"
        assert progress == sorted(progress) and progress[-1] == started.total_bytes > 1 * MiB
        # Only what the pipeline needs: no README, root checkpoint, fp16 variant or safety checker.
        fetched = set(available.files)
        assert "model_index.json" in fetched and "unet/diffusion_pytorch_model.safetensors" in fetched
        assert not any(p.endswith((".md", ".ckpt")) or ".fp16." in p or p.startswith("safety_checker") for p in fetched)
        folder = Path(settings.data_dir) / "models" / "tiny-b"
        for path, digest in available.files.items():
            assert sha256(folder / path) == digest
        entry = runtime_catalog(settings)["models"]["tiny-b"]
        assert entry["revision"] and entry["entry"]["family"] == "sd1.x"
        assert (entry["entry"]["defaults"]["width"], entry["entry"]["source"]) == (256, "models/tiny-b")
        assert not any(Path(settings.data_dir, "models", ".partial").iterdir()), "the pull folder was renamed into place"

        # The generator started before the pull; the model is used with no restart.
        await bus.send(generate_command("job-new-model", model="tiny-b"))
        images = await tap.wait(ImageGenerated, "job-new-model", timeout=60)
        assert images[0].metadata.model_id == "tiny-b"

        # Removal is refused while a job uses the model, then goes through.
        job_id = pending_job(settings, "tiny-b")
        answer = msgspec.json.decode(await bus.request(RemoveModel(model="tiny-b"), timeout=20), type=RemovalResult)
        assert not answer.removed and answer.jobs == [job_id] and job_id in answer.message and folder.exists()
        DataLayout(settings.data_dir).queue_file.write_text("")
        answer = msgspec.json.decode(await bus.request(RemoveModel(model="tiny-b"), timeout=20), type=RemovalResult)
        assert answer.removed, answer.message
        await tap.wait(ModelRemoved)
        assert not folder.exists() and "tiny-b" not in runtime_catalog(settings).get("models", {})
        await bus.send(generate_command("job-after-removal", model="tiny-b"))
        failed = await tap.wait(JobFailed, "job-after-removal", timeout=30)
        assert "unknown model 'tiny-b'" in failed[0].reason


async def test_a_hub_pull_resumes_after_the_server_drops_the_connection(stage_settings, bus, tap, hub, tmp_path):
    repo = tmp_path / "big-lora"
    weights = write_safetensors(repo / "pytorch_lora_weights.safetensors", {"w": 6 * MiB})  # 24 MiB
    (repo / "README.md").write_text("a LoRA")
    hub.add_repo("acme/big-lora", repo)
    hub.drop_once["acme/big-lora/pytorch_lora_weights.safetensors"] = 15 * MiB
    async with running(models_main, stage_settings, "models", bus):
        await bus.send(PullModel(source="acme/big-lora", kind="lora", name="big"))
        available = (await tap.wait(ModelAvailable, timeout=60))[0]
    # huggingface_hub keeps whole 10 MB chunks and asks for the rest with a Range request.
    ranges = [r for method, path, r in hub.requests if method == "GET" and "/resolve/" in path]
    assert ranges == [None, "bytes=10485760-"]
    target = Path(stage_settings.data_dir) / "models" / "loras" / "big.safetensors"
    assert available.kind == "lora" and available.path == "models/loras/big.safetensors"
    assert sha256(target) == sha256(weights) == available.files["big.safetensors"]


async def test_a_checksum_mismatch_is_refused_and_nothing_is_added(stage_settings, bus, tap, hub, hub_repo):
    hub.add_repo("acme/tiny-b", hub_repo)
    hub.wrong_sha.add("acme/tiny-b/unet/diffusion_pytorch_model.safetensors")
    async with running(models_main, stage_settings, "models", bus):
        await bus.send(PullModel(source="acme/tiny-b"))
        failed = (await tap.wait(ModelPullFailed, timeout=60))[0]
    assert "checksum mismatch for unet/diffusion_pytorch_model.safetensors" in failed.reason
    assert tap.of(ModelAvailable) == [] and not (Path(stage_settings.data_dir) / "models" / "tiny-b").exists()
    assert runtime_catalog(stage_settings) == {}


async def test_a_pull_that_would_fill_the_disk_is_refused_before_downloading(stage_settings, bus, tap, hub, hub_repo):
    hub.add_repo("acme/tiny-b", hub_repo)
    settings = msgspec.structs.replace(stage_settings, models_disk_reserve=10**18)
    async with running(models_main, settings, "models", bus):
        await bus.send(PullModel(source="acme/tiny-b"))
        failed = (await tap.wait(ModelPullFailed, timeout=60))[0]
    assert failed.reason.startswith("not enough disk space: the pull needs")
    assert not [path for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path]


async def test_url_pulls_of_a_single_file_checkpoint_and_a_lora(stage_settings, bus, tap, hub, tmp_path, tiny_model,
                                                               tiny_lora):
    checkpoint = shutil.copy(tiny_model / "unet" / "diffusion_pytorch_model.safetensors", tmp_path / "single.safetensors")
    url = hub.add_file("single.safetensors", Path(checkpoint))
    hub.drop_once["files/single.safetensors"] = Path(checkpoint).stat().st_size // 2 + MiB
    pickled = hub.add_file("old.ckpt", Path(checkpoint))
    lora_url = hub.add_file("fox.safetensors", tiny_lora)
    data = Path(stage_settings.data_dir)
    async with running(models_main, stage_settings, "models", bus):
        await bus.send(PullModel(source=url, sha256="0" * 64, name="wrong"))
        wrong = (await tap.wait(ModelPullFailed, timeout=30))[0]
        await bus.send(PullModel(source=pickled))
        refused = (await tap.wait(ModelPullFailed, count=2, timeout=30))[1]
        await bus.send(PullModel(source=url, sha256=sha256(Path(checkpoint))))
        single = (await tap.wait(ModelAvailable, timeout=30))[0]
        await bus.send(PullModel(source=lora_url, kind="lora", name="fox-pulled"))
        lora = (await tap.wait(ModelAvailable, count=2, timeout=30))[1]
    assert wrong.reason.startswith("checksum mismatch for single.safetensors: expected sha256 000")
    assert "pickled weights can run code" in refused.reason and "--allow-pickle" in refused.reason
    # Resumed with Range after the drop (whole 1 MiB chunks kept).
    assert (("GET", "/files/single.safetensors", "bytes=1048576-") in hub.requests
            or ("GET", "/files/single.safetensors", "bytes=2097152-") in hub.requests), hub.requests
    entry = runtime_catalog(stage_settings)["models"]["single"]["entry"]
    assert entry["source"] == "models/single/single.safetensors" and entry["config"] == "models/tiny-sd"
    assert single.family == "sd1.x" and sha256(data / entry["source"]) == sha256(Path(checkpoint))
    assert lora.path == "models/loras/fox-pulled.safetensors" and sha256(data / lora.path) == sha256(tiny_lora)

    # The ingress sees the new model without a restart (its catalog follows state/models.toml).
    async with AsyncTestClient(app=create_app(stage_settings)) as client:
        await wait_for(lambda: client.app.state.bus.connected, what="ingress connected")
        models = (await client.get("/v1/models")).json()["models"]
        assert models["single"]["family"] == "sd1.x" and models["single"]["defaults"]["width"] == 512
        pulled = await client.post("/v1/models/pulls", json={"source": "acme/none", "name": "x"})
        assert pulled.status_code == 202 and pulled.json()["name"] == "x"
        assert (await client.get(f"/v1/models/pulls/{single.pull_id}")).json()["state"] == "available"
        assert (await client.get(f"/v1/models/pulls/{uuid.uuid4()}")).status_code == 404


async def test_the_cli_pulls_in_its_own_process_when_darkroom_is_not_running(with_tiny_model, tmp_path, tiny_model, capsys):
    from ops import models

    settings = msgspec.structs.replace(with_tiny_model, amqp_url=None, models_disk_reserve=0)
    source = shutil.copytree(tiny_model, tmp_path / "local-model")
    assert await models.pull(settings, PullModel(source=str(source), name="local")) == 0
    assert models.list_models(settings) == 0
    out = capsys.readouterr()
    assert "pulling in this process" in out.err and "local is available in the catalog" in out.err
    assert "pulled:" in out.out and "local" in out.out
    assert (Path(settings.data_dir) / "models" / "local" / "model_index.json").exists()
    assert models.show(settings, "local") == 0
    shown = msgspec.json.decode(capsys.readouterr().out)
    assert shown["catalog_entry"]["family"] == "sd1.x" and shown["pulled"]["origin"] == str(source)
    assert all(len(f["sha256"]) == 64 for f in shown["pulled"]["files"])
