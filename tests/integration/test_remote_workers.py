"""Generators on other hosts, sharing nothing with the control node but the broker.

The test makes two network namespaces (`ops/netns.py`: veth pairs on private /30s of 10.213.x.0,
never any other address), and runs one generator in each (in its own UTS namespace, so each has
its own host name) with its own EMPTY folder. The control node (`darkroom run` without a
generator, on this test's private broker) is reachable from the namespaces only through small TCP
forwarders bound to the veth host addresses. Each worker gets its credential from `darkroom
workers add` and runs the command that prints. Jobs with an init image and a LoRA on a model only
the control node has must complete on both workers, each fetching the model (file by file,
checked) and the LoRA (by its sha256) into its own folder once; a model added while they run is
fetched by the worker that gets its job; a model file that does not match its recorded hash fails
its job and leaves nothing; GET /v1/workers lists both.

It needs root and `ip` (CI runs as root): without them it fails, saying so.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
import pytest
from PIL import Image

from ops.broker import free_port, rabbitmqctl
from ops.netns import Forwarder, add_worker, clean_env, darkroom_command, namespaces, spawn_worker, stop_all
from ops.workers import permissions
from schemas.events import GenerateImages, JobFailed, ModelRemoved
from schemas.jobs import GenerationSettings, JobSpec, LoraRef
from schemas.settings import Settings
from tests.support import eventually

pytestmark = pytest.mark.timeout(240)

JOBS = 4


def created_token(output: str) -> str:
    found = re.search(r"\bdrk_[0-9a-f]+_[A-Za-z0-9_-]+", output)
    assert found, f"no token in {output!r}"
    return found.group(0)


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


async def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """A `darkroom` command, off the event loop (the forwarders run on it)."""
    return await asyncio.to_thread(subprocess.run, [*darkroom_command(), *args], env=env, capture_output=True,
                                   text=True, timeout=60)


def png_base64(size: int = 64) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 90, 30)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def job_starts(data_dir: Path) -> dict[str, set[str]]:
    """job id -> the workers that started it, from the control node's event log."""
    found: dict[str, set[str]] = {}
    for path in sorted((data_dir / "events").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event["type"] == "job.started":
                found.setdefault(event["job_id"], set()).add(event["worker"])
    return found


async def test_generators_in_other_network_namespaces_share_nothing_but_the_broker(
        settings, private_broker, tiny_model, second_model, tiny_lora, tmp_path, bus, tap):
    if private_broker is None:
        pytest.fail("this test makes RabbitMQ users with rabbitmqctl: run it on the session's private broker "
                    "(unset DARKROOM_TEST_AMQP_URL)")
    started = time.monotonic()
    data_dir = Path(settings.data_dir)
    # The jobs' model is one the workers do not have (the built-in tiny-sd they build themselves):
    # a catalog model of the control node, fetched by each worker when its first job needs it.
    shutil.copytree(second_model, data_dir / "models" / "fox-sd")
    (data_dir / "darkroom.toml").write_text('[models.fox-sd]\nsource = "./models/fox-sd"\ndtype = "float32"\n')
    (data_dir / "models" / "loras").mkdir(parents=True)
    shutil.copy(tiny_lora, data_dir / "models" / "loras" / "fox.safetensors")
    lora_sha256 = hashlib.sha256(tiny_lora.read_bytes()).hexdigest()
    port = free_port()
    broker_port = private_broker.port
    control_env = clean_env(
        DARKROOM_DATA_DIR=str(data_dir), DARKROOM_AMQP_URL=settings.amqp_url, DARKROOM_NAMESPACE=settings.namespace,
        DARKROOM_PORT=str(port), DARKROOM_CONFIG_PATH=str(data_dir / "darkroom.toml"),
        DARKROOM_SERVICES="recorder,saver,enricher,reaper,ingress",
    )
    control = spawn([*darkroom_command(), "run"], control_env, tmp_path / "control.log")
    workers: list[subprocess.Popen] = []
    forwarder = Forwarder()
    api = f"http://127.0.0.1:{port}"
    try:
        with namespaces(2) as spaces:
            first_key = data_dir / "state" / "first-admin-key"

            async def healthy() -> bool:
                assert control.poll() is None, (tmp_path / "control.log").read_text()[-3000:]
                try:
                    async with httpx.AsyncClient() as http:
                        # `degraded`: up, with no generator consuming yet (they are on other hosts).
                        return (await http.get(f"{api}/health", timeout=1)).json().get("status") == "degraded"
                except (httpx.HTTPError, ValueError):
                    return False

            await eventually(healthy, timeout=90, interval=0.25, what="the control node to answer")
            admin = {"Authorization": f"Bearer {first_key.read_text().strip()}"}
            # The namespaces reach the broker and the API only through their veth host address.
            for ns in spaces:
                await forwarder.add(ns.host_ip, broker_port, broker_port)
                await forwarder.add(ns.host_ip, port, port)
            # One credential per worker host, made as an operator would, and the command it prints.
            commands = {}
            for index, ns in enumerate(spaces):
                name = f"w{index}"
                commands[name], printed = await add_worker(name, ns, control_env, rabbitmq_dir=private_broker.base,
                                                           api_port=port)
                assert f"RabbitMQ user 'darkroom-worker-{name}'" in printed, printed
                line = shlex.join(commands[name])
                assert f"@{ns.host_ip}:{broker_port}/" in line and f"--namespace {settings.namespace}" in line
            # Its RabbitMQ user may configure, write and read this namespace's names and nothing else.
            granted = rabbitmqctl(private_broker.base, "list_user_permissions", "darkroom-worker-w0")
            assert "\t".join(["/", *permissions(settings.namespace)]) in granted, granted
            # Each worker: its own network namespace and host name, its own empty folder, nothing else.
            folders = {}
            for index, ns in enumerate(spaces):
                name = f"w{index}"
                home = tmp_path / f"host-{name}"
                home.mkdir()
                folders[name] = home / "darkroom-worker"
                worker_env = clean_env(DARKROOM_PRESENCE_INTERVAL="1", DARKROOM_TORCH_THREADS="1",
                                       DARKROOM_MAX_BATCH="1", DARKROOM_HEARTBEAT_INTERVAL="2")
                workers.append(spawn_worker(ns, f"worker-{name}", commands[name], worker_env,
                                            tmp_path / f"{name}.log", cwd=home))

            async with httpx.AsyncClient(base_url=api, timeout=10) as http:
                async def both_up() -> list[dict]:
                    for worker, name in zip(workers, ("w0", "w1"), strict=True):
                        assert worker.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
                    listed = (await http.get("/v1/workers", headers=admin)).json()["workers"]
                    return listed if len([w for w in listed if w["status"] == "up"]) == 2 else []

                await eventually(both_up, timeout=90, interval=0.25, what="both workers to announce themselves")
                assert (await http.get("/health")).json()["status"] == "ok", "generators consume: healthy"
                for folder in folders.values():
                    assert not (folder / "models" / "fox-sd").exists(), "no model is fetched before a job needs it"
                ready_at = time.monotonic()
                body = {"prompt": "a fox in the snow", "model": "fox-sd", "init_image": png_base64(),
                        "loras": [{"name": "fox", "weight": 0.8}],
                        "settings": {"width": 64, "height": 64, "num_inference_steps": 4, "strength": 0.75}}

                async def submit(job: dict) -> str:
                    answer = await http.post("/v1/jobs", headers=admin, json=job)
                    assert answer.status_code == 202, answer.text
                    return answer.json()["id"]

                async def completed(ids: list[str]) -> list[dict]:
                    async def probe() -> list[dict]:
                        docs = [(await http.get(f"/v1/jobs/{i}", headers=admin)).json() for i in ids]
                        failed = [d for d in docs if d["status"] in ("failed", "cancelled")]
                        assert not failed, failed
                        return docs if all(d["status"] == "completed" for d in docs) else []

                    return await eventually(probe, timeout=90, interval=0.2, what=f"jobs {ids} to complete")

                ids = [await submit(body | {"settings": body["settings"] | {"seed": seed}}) for seed in range(JOBS)]
                docs = await completed(ids)
                jobs_seconds = time.monotonic() - ready_at
                for doc in docs:
                    assert (doc["mode"], doc["model"]) == ("img2img", "fox-sd")
                    assert doc["loras"] == [{"name": "fox", "weight": 0.8, "sha256": lora_sha256}]
                    [image] = doc["images"]
                    png = (await http.get(f"/v1/images/{image['id']}", headers=admin)).content
                    with Image.open(io.BytesIO(png)) as decoded:
                        decoded.load()
                        assert decoded.size == (64, 64)
                # Both workers served jobs (round robin with a prefetch of 2 each).
                starts = job_starts(data_dir)
                served_by = {next(iter(starts[i])).rsplit("-", 1)[0] for i in ids}
                assert served_by == {"worker-w0", "worker-w1"}, starts
                # Each fetched the model once, file by file, into its own folder, every file the
                # control node's bytes; and loaded it once (the usual model.loaded, then warm).
                control_files = {p.relative_to(data_dir / "models" / "fox-sd").as_posix(): p.read_bytes()
                                 for p in (data_dir / "models" / "fox-sd").rglob("*") if p.is_file()}
                loads = model_loads(data_dir, "fox-sd")
                for name, folder in folders.items():
                    fetched = folder / "models" / "fox-sd"
                    for relative, content in control_files.items():
                        assert (fetched / relative).read_bytes() == content, f"{name}: {relative}"
                    assert log_events(tmp_path / f"{name}.log", "model fetched") == 1, name
                    assert loads.get(f"worker-{name}") == 1, loads
                    assert not list((folder / "models").glob(".fox-sd.*")), "no temp folder left"
                # Each fetched the LoRA by its hash into its own folder, checked, and links it by name.
                for name, folder in folders.items():
                    stored = folder / "models" / "loras" / ".sha256" / f"{lora_sha256}.safetensors"
                    assert hashlib.sha256(stored.read_bytes()).hexdigest() == lora_sha256, name
                    link = folder / "models" / "loras" / "fox.safetensors"
                    assert link.is_symlink() and link.resolve() == stored.resolve()
                    assert (folder / "models" / "tiny-sd" / "model_index.json").exists(), "its own built-in model"
                    assert not (folder / "events").exists() or not any((folder / "events").iterdir())

                # A model added on the control node while the workers run: the worker that gets
                # its job asks the ingress again, fetches it and runs the job.
                shutil.copytree(tiny_model, data_dir / "models" / "late-sd")
                with (data_dir / "darkroom.toml").open("a") as toml:
                    toml.write('[models.late-sd]\nsource = "./models/late-sd"\ndtype = "float32"\n')

                async def listed_model(model: str) -> bool:
                    return model in (await http.get("/v1/models", headers=admin)).json()["models"]

                await eventually(lambda: listed_model("late-sd"), timeout=10, what="the control node to list late-sd")
                late_id = await submit({"prompt": "late", "model": "late-sd",
                                        "settings": {"width": 64, "height": 64, "num_inference_steps": 2, "seed": 1}})
                [late] = await completed([late_id])
                assert late["model"] == "late-sd" and len(late["images"]) == 1

                # A pulled model whose file on the control node no longer matches the sha256 the
                # models stage recorded (same size, other bytes): the worker refuses it, the job
                # fails with the reason, and nothing of it is kept on the worker.
                shutil.copytree(tiny_model, data_dir / "models" / "bad-sd")
                index_size = (data_dir / "models" / "bad-sd" / "model_index.json").stat().st_size
                (data_dir / "state" / "models.toml").write_text(
                    '[models.bad-sd]\norigin = "test"\npath = "models/bad-sd"\n\n'
                    f'[[models.bad-sd.files]]\npath = "model_index.json"\nsize = {index_size}\nsha256 = "{"0" * 64}"\n\n'
                    '[models.bad-sd.entry]\nsource = "models/bad-sd"\ndtype = "float32"\n')
                await eventually(lambda: listed_model("bad-sd"), timeout=10, what="the control node to list bad-sd")
                bad_id = await submit({"prompt": "bad", "model": "bad-sd",
                                       "settings": {"width": 64, "height": 64, "num_inference_steps": 2, "seed": 1}})

                async def failed_job() -> dict | None:
                    doc = (await http.get(f"/v1/jobs/{bad_id}", headers=admin)).json()
                    assert doc["status"] != "completed", doc
                    return doc if doc["status"] == "failed" else None

                bad = await eventually(failed_job, timeout=60, interval=0.2, what="the bad-sd job to fail")
                assert "model 'bad-sd' could not be fetched" in bad["error"], bad
                assert "file model_index.json" in bad["error"] and "nothing was kept" in bad["error"], bad
                for folder in folders.values():
                    assert not (folder / "models" / "bad-sd").exists()
                    assert not list((folder / "models").glob(".bad-sd.*")), "no temp folder left"

                async def listed_with_jobs() -> list[dict]:
                    listed = (await http.get("/v1/workers", headers=admin)).json()["workers"]
                    return listed if sum(w["jobs_done"] for w in listed) == JOBS + 1 else []

                listed = await eventually(listed_with_jobs, timeout=10, what="GET /v1/workers to count the jobs")
                assert sorted(w["host"] for w in listed) == ["worker-w0", "worker-w1"]
                for w in listed:
                    assert (w["status"], w["device"], w["max_batch"]) == ("up", "cpu", 1)
                    assert "fox-sd" in w["models"]
                    assert w["dtype"] == "float32" and w["jobs_done"] >= 1 and 0 <= w["busy"] <= 1
                shown = await cli(["workers"], clean_env(DARKROOM_URL=api, DARKROOM_API_KEY=admin["Authorization"][7:]))
                assert shown.returncode == 0 and "worker-w0" in shown.stdout and "worker-w1" in shown.stdout, shown

                # Who may fetch files: worker keys and admins; tenants and bad hashes get a clear 4xx.
                worker_token = commands["w0"][commands["w0"].index("--token") + 1]
                as_worker = {"Authorization": f"Bearer {worker_token}"}
                fetched = await http.get(f"/v1/files/loras/{lora_sha256}", headers=as_worker)
                assert fetched.status_code == 200 and hashlib.sha256(fetched.content).hexdigest() == lora_sha256
                manifest = (await http.get("/v1/files/models", headers=as_worker)).json()["models"]
                fox = next(m for m in manifest if m["id"] == "fox-sd")
                assert {f["path"]: f["sha256"] for f in fox["files"]} == {
                    path: hashlib.sha256(content).hexdigest() for path, content in control_files.items()}
                assert fox["entry"]["source"] == "." and fox["entry"]["dtype"] == "float32"
                one = (await http.get("/v1/files/models/fox-sd/model_index.json", headers=as_worker)).content
                assert one == control_files["model_index.json"]
                outside = await http.get("/v1/files/models/fox-sd/..%2Fdarkroom.toml", headers=as_worker)
                assert outside.status_code in (400, 404), outside.text
                assert (await http.get("/v1/files/models/nope/model_index.json", headers=as_worker)).status_code == 404
                tenant = created_token((await cli(["keys", "create", "--name", "tenant"], control_env)).stdout)
                as_tenant = {"Authorization": f"Bearer {tenant}"}
                refused = await http.get(f"/v1/files/loras/{lora_sha256}", headers=as_tenant)
                assert refused.status_code == 403 and "worker key" in refused.json()["message"]
                assert (await http.get("/v1/files/models", headers=as_tenant)).status_code == 403
                assert (await http.get("/v1/workers", headers=as_tenant)).status_code == 403
                submitted = await http.post("/v1/jobs", headers=as_worker, json=body)
                assert submitted.status_code == 403 and "worker key may only fetch files" in submitted.json()["message"]
                assert (await http.get("/v1/workers", headers=as_worker)).status_code == 403
                missing = await http.get(f"/v1/files/loras/{'0' * 64}", headers=as_worker)
                assert missing.status_code == 404 and "no LoRA file with sha256" in missing.json()["message"]
                bad = await http.get("/v1/files/loras/not-a-hash", headers=as_worker)
                assert bad.status_code == 400 and "sha256" in bad.json()["message"]

                # A LoRA the ingress cannot serve fails its job with the reason (no retries).
                ghost = GenerateImages(job_id="ghost-lora", created_at=datetime.now(UTC), spec=JobSpec(
                    prompt="x", model="fox-sd", loras=(LoraRef(name="ghost", sha256="f" * 64),),
                    settings=GenerationSettings(num_images=1, num_inference_steps=2, guidance_scale=7.5, width=64,
                                                height=64, seed=1)))
                await bus.send(ghost)
                [failure] = await tap.wait(JobFailed, "ghost-lora", timeout=30)
                assert "LoRA 'ghost'" in failure.reason and "could not be fetched" in failure.reason
                assert "HTTP 404" in failure.reason, failure.reason

                # A worker that shuts down says so: the list empties without waiting 3 intervals.
                await stop_all(workers)
                assert [w.returncode for w in workers] == [0, 0], "workers stopped cleanly on SIGTERM"

                async def none_listed() -> bool:
                    return (await http.get("/v1/workers", headers=admin)).json()["workers"] == []

                await eventually(none_listed, timeout=10, what="stopped workers to leave GET /v1/workers")

                # Revoking a worker: its key stops working and its RabbitMQ user is gone.
                revoked = await cli(["workers", "revoke", "w0", "--rabbitmq-dir", str(private_broker.base)], control_env)
                assert revoked.returncode == 0, revoked.stderr
                assert "darkroom-worker-w0" not in rabbitmqctl(private_broker.base, "list_users")
                assert "darkroom-worker-w1" in rabbitmqctl(private_broker.base, "list_users")

                async def key_refused() -> bool:
                    answer = await http.get(f"/v1/files/loras/{lora_sha256}", headers=as_worker)
                    return answer.status_code == 401 and "revoked" in answer.json()["message"]

                await eventually(key_refused, timeout=5, what="the revoked worker key to be refused")
            print(f"\nremote workers: {JOBS} img2img+LoRA jobs (model and LoRA fetched by each) on 2 namespaced "
                  f"workers in {jobs_seconds:.1f} s after both were up; whole test {time.monotonic() - started:.1f} s")
    finally:
        # Stopped while the forwarders (on this event loop) still run, so that they can say goodbye.
        await stop_all(workers)
        await forwarder.close()
        await stop_all([control], timeout=60)


def model_loads(data_dir: Path, model: str) -> dict[str, int]:
    """worker host -> how many times it loaded `model`, from the control node's event log."""
    found: dict[str, int] = {}
    for path in sorted((data_dir / "events").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event["type"] == "model.loaded" and event["model"] == model:
                host = event["worker"].rsplit("-", 1)[0]
                found[host] = found.get(host, 0) + 1
    return found


def log_events(log: Path, message: str) -> int:
    """How many JSON log lines of a process say `message`."""
    count = 0
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            count += json.loads(line).get("event") == message
    return count


def test_a_fetched_lora_that_does_not_match_its_hash_is_refused_and_not_kept(tmp_path):
    """The worker side alone, against a fake ingress: what arrives is checked before it is used."""
    from pipelines.errors import LoraError
    from services.generator.fetcher import IngressFiles, LoraFetcher

    good, bad = b"the real LoRA bytes", b"something else"
    digest = hashlib.sha256(good).hexdigest()
    served = {"body": bad}
    asked = []

    def ingress(request: httpx.Request) -> httpx.Response:
        asked.append((request.url.path, request.headers.get("authorization")))
        return httpx.Response(200, content=served["body"])

    folder = tmp_path / "models" / "loras"
    files = IngressFiles("http://control:8000", "drk_token", transport=httpx.MockTransport(ingress))
    fetcher = LoraFetcher(files, folder)
    with pytest.raises(LoraError, match=f"LoRA 'fox' \\(sha256 {digest}\\) could not be fetched .* hash to"):
        fetcher.ensure((LoraRef(name="fox", sha256=digest),))
    assert asked == [(f"/v1/files/loras/{digest}", "Bearer drk_token")]
    assert not (folder / "fox.safetensors").exists() and list((folder / ".sha256").iterdir()) == []
    served["body"] = good
    fetcher.ensure((LoraRef(name="fox", sha256=digest),))
    assert (folder / "fox.safetensors").read_bytes() == good
    fetcher.ensure((LoraRef(name="fox", sha256=digest),))
    assert len(asked) == 2, "kept: not fetched again"
    with pytest.raises(LoraError, match=r"not on this worker .* no sha256"):
        fetcher.ensure((LoraRef(name="other"),))


def test_a_fetched_model_is_whole_and_checked_or_absent_and_fetched_once(tmp_path):
    """The worker side alone, against a fake ingress: a model whose files do not all hash to the
    manifest's sha256 fails its load with the reason and leaves nothing; a good one lands in
    models/<id> in one rename and is not fetched again, and goes when the control node removes
    it; a folder this worker did not fetch is never overwritten nor deleted."""
    from pipelines.errors import ModelLoadError
    from schemas.catalog import ModelEntry
    from services.generator.fetcher import IngressFiles
    from services.generator.remote_models import ModelFetcher, RemoteCatalog, follow_models
    from services.runtime import LiveCatalog

    content = {"model_index.json": b"{}", "unet/diffusion_pytorch_model.safetensors": b"weights" * 100}
    served = dict(content) | {"unet/diffusion_pytorch_model.safetensors": b"tampered"}
    manifest = {"models": [{"id": "fox-sd", "entry": msgspec.to_builtins(ModelEntry(source=".", dtype="float32")),
                            "files": [{"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                                      for p, b in content.items()]},
                           # What the worker never takes, whatever the ingress says: paths out of the model's folder.
                           {"id": "escape", "entry": msgspec.to_builtins(ModelEntry(source=".")),
                            "files": [{"path": "../../evil", "size": 1, "sha256": "0" * 64}]}]}
    asked = []

    def ingress(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if request.url.path == "/v1/files/models":
            return httpx.Response(200, json=manifest)
        return httpx.Response(200, content=served[request.url.path.removeprefix("/v1/files/models/fox-sd/")])

    data = tmp_path / "worker"
    files = IngressFiles("http://control:8000", "drk_token", transport=httpx.MockTransport(ingress))
    catalog = RemoteCatalog(LiveCatalog(Settings(data_dir=str(data), config_path=str(data / "darkroom.toml"))),
                            ModelFetcher(files, data / "models"))
    with pytest.raises(KeyError, match="fox-sd"):
        catalog.local.model("fox-sd")
    entry = catalog.model("fox-sd")  # unknown: the worker asks the ingress, which lists it
    assert entry.source == str(data / "models" / "fox-sd" / ".") and entry.dtype == "float32"
    [model] = catalog.remote.values()
    assert "escape" not in catalog.models
    with pytest.raises(ModelLoadError, match=r"model 'fox-sd' could not be fetched .* file unet/diffusion_pytorch"
                                             r"_model.safetensors .* hash to .* nothing was kept"):
        catalog.fetcher.ensure(model)
    assert list((data / "models").iterdir()) == [], "no model folder, no temp folder"
    served.update(content)
    asked.clear()
    assert catalog.fetcher.ensure(model) is True
    assert {p: (data / "models" / "fox-sd" / p).read_bytes() for p in content} == content
    assert catalog.fetcher.ensure(model) is False and len(asked) == 2, "present: not fetched again"
    (data / "models" / "other").mkdir()
    other = msgspec.structs.replace(model, id="other")
    with pytest.raises(ModelLoadError, match="exists on this worker but was not fetched"):
        catalog.fetcher.ensure(other)
    # Removed on the control node: gone from the catalog and from this worker's disk (its own
    # folder `other` stays).
    manifest["models"] = []
    for removed in ("fox-sd", "other"):
        asyncio.run(follow_models(ModelRemoved(model=removed), catalog=catalog))
    assert "fox-sd" not in catalog.models and sorted(p.name for p in (data / "models").iterdir()) == ["other"]


def test_the_private_broker_lets_worker_users_in_on_its_worker_address_and_guest_only_on_loopback(tmp_path):
    """DARKROOM_BROKER_HOST: the private broker also listens on an interface address, where a
    worker's own user gets in (and only to its namespace's names) while `guest` is refused."""
    from ops.broker import PrivateBroker

    with namespaces(1) as [ns]:
        broker = PrivateBroker(tmp_path / "rabbitmq", name="darkroom-workers", host=ns.host_ip).start()
        try:
            assert broker.url.startswith("amqp://guest:guest@127.0.0.1:"), "this machine's services use loopback"
            rabbitmqctl(broker.base, "add_user", "w", "secret")
            rabbitmqctl(broker.base, "set_permissions", "-p", "/", "w", *permissions("dr"))
            probe = (
                "import asyncio, sys, aio_pika\n"
                "async def main(url):\n"
                "    try:\n"
                "        connection = await aio_pika.connect(url, timeout=10)\n"
                "    except Exception as exc:\n"
                "        return print('refused', type(exc).__name__)\n"
                "    channel = await connection.channel()\n"
                "    await channel.declare_exchange('dr.events', 'topic', durable=True)\n"
                "    try:\n"
                "        await channel.declare_exchange('other.events', 'topic', durable=True)\n"
                "        print('connected; other namespace ALLOWED')\n"
                "    except Exception as exc:\n"
                "        print('connected; other namespace refused:', type(exc).__name__, flush=True)\n"
                "    await connection.close()\n"
                "asyncio.run(main(sys.argv[1]))\n"
            )

            def from_namespace(user: str) -> str:
                url = f"amqp://{user}@{ns.host_ip}:{broker.port}/"
                result = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-c", probe, url],
                                        capture_output=True, text=True, timeout=60)
                return result.stdout.strip().splitlines()[0] if result.stdout.strip() else result.stderr[-500:]

            assert from_namespace("w:secret") == "connected; other namespace refused: ChannelAccessRefused"
            assert from_namespace("guest:guest").startswith("refused")
        finally:
            broker.stop()
