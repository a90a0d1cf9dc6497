"""The OpenAI Images and AUTOMATIC1111 dialects driven by their official clients (`openai`,
`webuiapi`) against the whole stack started as `just run` starts it: real broker, real generator,
the tiny model, a real LoRA file. Small sizes and few steps: the tiny model runs on a CPU here."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import webuiapi
from PIL import Image

from ops.broker import free_port
from tests.e2e.conftest import Stack, created_token, darkroom_command
from tests.support import wait_for_sync

pytestmark = pytest.mark.slow
USER, PASSWORD = "alice", "wonderland"


@pytest.fixture(scope="module")
def dialect_stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_lora: Path,
                  second_model: Path) -> Iterator[Stack]:
    """A stack with A1111's --api-auth user, a LoRA in the library and a second model."""
    root = tmp_path_factory.mktemp("dialects")
    data_dir = root / "var"
    (data_dir / "models" / "loras").mkdir(parents=True)
    shutil.copy(tiny_lora, data_dir / "models" / "loras" / "fox.safetensors")
    (root / "darkroom.toml").write_text(f'[models.tiny-b]\nsource = "{second_model}"\ndtype = "float32"\n'
                                        '[models.tiny-b.defaults]\nnum_inference_steps = 4\nwidth = 64\nheight = 64\n')
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env |= {"DARKROOM_DATA_DIR": str(data_dir), "DARKROOM_PORT": str(port), "DARKROOM_LOG_FORMAT": "json",
            "DARKROOM_CONFIG_PATH": str(root / "darkroom.toml"), "DARKROOM_SDAPI_AUTH": f"{USER}:{PASSWORD}",
            "DARKROOM_PREVIEW_EVERY": "1"}
    key = created_token(subprocess.run([*darkroom_command(), "keys", "create", "--name", "ops", "--admin"], env=env,
                         capture_output=True, text=True, check=True).stdout)
    log = root / "stack.log"
    with log.open("wb") as out:
        process = subprocess.Popen([*darkroom_command(), "run"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    stack = Stack(url=f"http://127.0.0.1:{port}", data_dir=data_dir, process=process, log=log, token=key)

    def healthy() -> bool:
        assert process.poll() is None, f"darkroom run exited:\n{log.read_text()[-3000:]}"
        try:
            return httpx.get(f"{stack.url}/health", timeout=1).json().get("status") == "ok"
        except (httpx.HTTPError, ValueError):
            return False

    try:
        wait_for_sync(healthy, timeout=180, interval=0.25, what="the stack to report healthy")
        yield stack
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def _rgba_with_hole(size: int = 64) -> bytes:
    """An opaque image with a transparent square: OpenAI's way of saying "repaint here"."""
    image = Image.new("RGBA", (size, size), (200, 40, 40, 255))
    image.paste((0, 0, 0, 0), (16, 16, 48, 48))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# -- OpenAI ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def oai(dialect_stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{dialect_stack.url}/openai/v1", api_key=dialect_stack.token, max_retries=0,
                         timeout=120)


def test_openai_generate_b64_json(oai: openai.OpenAI) -> None:
    result = oai.images.generate(prompt="a lighthouse at dusk", model="dall-e-2", n=2, size="256x256",
                                 response_format="b64_json", quality="low", style="natural", user="tester")
    assert len(result.data) == 2
    for item in result.data:
        assert _png(base64.b64decode(item.b64_json)).size == (256, 256)
        assert item.revised_prompt == "a lighthouse at dusk"


def test_openai_generate_url_is_the_saved_image(oai: openai.OpenAI, dialect_stack: Stack) -> None:
    result = oai.images.generate(prompt="a fox", model="tiny-sd", size="64x64", response_format="url")
    [item] = result.data
    assert item.url.startswith(f"{dialect_stack.url}/v1/images/")
    answer = httpx.get(item.url, headers=dialect_stack.auth, timeout=10)
    assert answer.status_code == 200 and _png(answer.content).size == (64, 64)


def test_openai_edit_with_mask_inpaints_and_without_one_uses_transparency(oai: openai.OpenAI,
                                                                           dialect_stack: Stack) -> None:
    opaque = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 200)).save(opaque, format="PNG")
    edited = oai.images.edit(image=("in.png", opaque.getvalue(), "image/png"),
                             mask=("mask.png", _rgba_with_hole(), "image/png"), prompt="a red door", model="tiny-sd",
                             response_format="b64_json")
    assert _png(base64.b64decode(edited.data[0].b64_json)).size == (64, 64)
    hole = oai.images.edit(image=("in.png", _rgba_with_hole(), "image/png"), prompt="a window", model="tiny-sd")
    assert _png(base64.b64decode(hole.data[0].b64_json)).size == (64, 64)
    with dialect_stack.client() as client:
        modes = [job["mode"] for job in client.get("/v1/jobs", params={"limit": 20}).json()["jobs"]
                 if job["prompt"] in ("a red door", "a window")]
    assert modes == ["inpaint", "inpaint"], modes


def test_openai_variation(oai: openai.OpenAI) -> None:
    image = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 200)).save(image, format="PNG")
    result = oai.images.create_variation(image=("in.png", image.getvalue(), "image/png"), model="tiny-sd", n=1)
    assert _png(base64.b64decode(result.data[0].b64_json)).size == (64, 64)


def test_openai_models_lists_aliases_and_catalog(oai: openai.OpenAI) -> None:
    names = {model.id for model in oai.models.list()}
    assert {"dall-e-2", "dall-e-3", "gpt-image-1", "tiny-sd", "tiny-b"} <= names


def test_openai_errors_raise_the_sdks_own_exceptions(oai: openai.OpenAI, dialect_stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as bad_size:
        oai.images.generate(prompt="x", model="dall-e-2", size="100x100")
    assert bad_size.value.body["param"] == "size" and bad_size.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as bad_model:
        oai.images.generate(prompt="x", model="midjourney")
    assert bad_model.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as unsupported:
        oai.images.generate(prompt="x", model="gpt-image-1", output_format="webp")
    assert unsupported.value.body["param"] == "output_format"
    with pytest.raises(openai.BadRequestError) as empty:
        oai.images.generate(prompt="   ", model="tiny-sd")
    assert empty.value.body["param"] == "prompt"
    stranger = openai.OpenAI(base_url=f"{dialect_stack.url}/openai/v1", api_key="drk_000000000000_" + "x" * 43,
                             max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.images.generate(prompt="x", model="tiny-sd")


def test_openai_anonymous_from_loopback_is_the_anonymous_tenant(dialect_stack: Stack) -> None:
    answer = httpx.post(f"{dialect_stack.url}/openai/v1/images/generations", timeout=60,
                        json={"prompt": "anonymous fox", "model": "tiny-sd", "size": "64x64"})
    assert answer.status_code == 200, answer.text
    with dialect_stack.client() as client:
        [job] = [j for j in client.get("/v1/jobs", params={"limit": 50}).json()["jobs"] if j["prompt"] == "anonymous fox"]
    assert job["owner"] == "anonymous"


# -- A1111 sdapi ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def a1111(dialect_stack: Stack) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(baseurl=f"{dialect_stack.url}/sdapi/v1", username=USER, password=PASSWORD,
                             sampler="Euler", steps=3)


def test_sdapi_txt2img_answers_images_and_a1111_info(a1111: webuiapi.WebUIApi) -> None:
    result = a1111.txt2img(prompt="a castle", width=64, height=64, batch_size=2, seed=7, cfg_scale=5)
    assert len(result.images) == 2 and all(image.size == (64, 64) for image in result.images)
    assert result.info["all_seeds"] == [7, 8] and result.info["sd_model_name"] == "tiny-sd"
    assert result.info["infotexts"][0].startswith("a castle\n") and "Seed: 7" in result.info["infotexts"][0]
    assert result.parameters["prompt"] == "a castle"


def test_sdapi_parameters_round_trip_through_png_info(a1111: webuiapi.WebUIApi) -> None:
    request = {"prompt": "a red fox <lora:fox:0.5>", "negative_prompt": "blurry", "seed": 1234, "steps": 3,
               "cfg_scale": 6.5, "sampler_name": "DPM++ 2M", "scheduler": "karras", "width": 64, "height": 56}
    result = a1111.txt2img(**request)
    parsed = a1111.png_info(result.image).json["parameters"]
    assert {key: parsed[key] for key in ("Prompt", "Negative prompt", "Steps", "Sampler", "CFG scale", "Seed",
                                         "Size-1", "Size-2", "Model")} == {
        "Prompt": request["prompt"], "Negative prompt": request["negative_prompt"], "Steps": str(request["steps"]),
        "Sampler": "DPM++ 2M Karras", "CFG scale": "6.5", "Seed": str(request["seed"]),
        "Size-1": str(request["width"]), "Size-2": str(request["height"]), "Model": "tiny-sd",
    }


def test_sdapi_img2img_and_inpaint(a1111: webuiapi.WebUIApi) -> None:
    init = Image.new("RGB", (64, 64), (30, 160, 60))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    plain = a1111.img2img(images=[init], prompt="a meadow", width=64, height=64, denoising_strength=0.6)
    assert plain.images[0].size == (64, 64) and plain.info["denoising_strength"] == 0.6
    painted = a1111.img2img(images=[init], mask_image=mask, prompt="a pond", width=64, height=64,
                            denoising_strength=0.9, inpainting_fill=1, inpaint_full_res=False)
    assert painted.images[0].size == (64, 64) and painted.info["is_using_inpainting_conditioning"] is True


def test_sdapi_models_options_and_loras(a1111: webuiapi.WebUIApi) -> None:
    assert {m["title"] for m in a1111.get_sd_models()} == {"tiny-sd", "tiny-b"}
    assert "fox" in {lora["name"] for lora in a1111.get_loras()}
    assert "Euler a" in a1111.util_get_sampler_names()
    a1111.util_set_model("tiny-b")
    assert a1111.util_get_current_model() == "tiny-b"
    try:
        assert a1111.txt2img(prompt="a boat", width=64, height=64).info["sd_model_name"] == "tiny-b"
    finally:
        a1111.util_set_model("tiny-sd")
    # webuiapi's set_options does not check the status; its session does the same request.
    refused = a1111.session.post(f"{a1111.baseurl}/options", json={"sd_model_checkpoint": "nope"})
    assert refused.status_code == 422 and "unknown model 'nope'" in refused.json()["detail"]
    assert a1111.util_get_current_model() == "tiny-sd"


def test_sdapi_unsupported_and_bad_fields_are_refused_in_a1111_shape(a1111: webuiapi.WebUIApi) -> None:
    with pytest.raises(RuntimeError) as tiling:
        a1111.txt2img(prompt="x", width=64, height=64, tiling=True)
    assert tiling.value.args[0] == 422 and json.loads(tiling.value.args[1])["detail"].startswith("tiling:")
    with pytest.raises(RuntimeError) as lora:
        a1111.txt2img(prompt="x <lora:missing:1>", width=64, height=64)
    assert lora.value.args[0] == 422 and "unknown LoRA 'missing'" in lora.value.args[1]


def test_sdapi_progress_during_a_run_then_interrupt(a1111: webuiapi.WebUIApi, dialect_stack: Stack) -> None:
    results: list = []
    runner = threading.Thread(target=lambda: results.append(
        a1111.txt2img(prompt="a long night", width=512, height=512, steps=50)), daemon=True)
    runner.start()
    seen = wait_for_sync(lambda: (p := a1111.get_progress())["progress"] > 0 and p["current_image"] and p,
                         timeout=90, interval=0.1, what="progress with a preview")
    assert seen["state"]["job_count"] == 1 and seen["state"]["sampling_steps"] == 50
    assert 0 < seen["progress"] < 1 and seen["eta_relative"] >= 0 and seen["textinfo"] == "Generating"
    assert _png(base64.b64decode(seen["current_image"]))
    job_id = seen["state"]["job"]
    a1111.interrupt()
    wait_for_sync(lambda: any(json.loads(line)["type"] == "job.cancel_requested"
                              for path in (dialect_stack.data_dir / "events").glob("*.jsonl")
                              for line in path.read_text().splitlines() if job_id in line),
                  timeout=10, what="the running job's cancel request")
    runner.join(60)
    assert results, "the held txt2img call returns once its job is cancelled"
    [result] = results
    assert result.images == [] and result.info["interrupted"] is True and result.info["status"] == "cancelled"
    assert a1111.get_progress()["state"]["job_count"] == 0


def test_sdapi_needs_the_api_auth_user_once_one_is_set(dialect_stack: Stack) -> None:
    answer = httpx.get(f"{dialect_stack.url}/sdapi/v1/sd-models", timeout=10)
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Basic"
    assert answer.json()["error"] == "Unauthorized"
    wrong = httpx.get(f"{dialect_stack.url}/sdapi/v1/sd-models", auth=(USER, "nope"), timeout=10)
    assert wrong.status_code == 401


def test_twenty_concurrent_txt2img_all_complete_and_are_batched(dialect_stack: Stack) -> None:
    async def one(client: httpx.AsyncClient, n: int) -> dict:
        answer = await client.post("/sdapi/v1/txt2img", json={"prompt": f"crowd {n}", "width": 64, "height": 64,
                                                              "steps": 2, "sampler_name": "Euler", "seed": n})
        assert answer.status_code == 200, answer.text
        return answer.json()

    async def all_of_them() -> list[dict]:
        async with httpx.AsyncClient(base_url=dialect_stack.url, headers=dialect_stack.auth, timeout=300) as client:
            return await asyncio.gather(*(one(client, n) for n in range(20)))

    answers = asyncio.run(all_of_them())
    assert all(len(answer["images"]) == 1 for answer in answers)
    job_ids = {json.loads(answer["info"])["job_id"] for answer in answers}
    assert len(job_ids) == 20
    started = [event for path in sorted((dialect_stack.data_dir / "events").glob("*.jsonl"))
               for event in map(json.loads, path.read_text().splitlines())
               if event["type"] == "job.started" and event["job_id"] in job_ids]
    assert {event["job_id"] for event in started} == job_ids
    assert max(event.get("batch_jobs", 1) for event in started) > 1, [e.get("batch_jobs") for e in started]
