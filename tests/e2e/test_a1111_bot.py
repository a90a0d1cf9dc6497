"""The A1111 Discord bot dialect (/a1111) against the running stack, driven with the HTTP calls
its API models describe (TPtownie/A1111_discord_bot api/models.py): every request of its API
README replayed (sizes and steps made small: the tiny model runs on a CPU here), every documented
field and status code checked, jobs followed to their base64 images through this dialect alone.
No credentials, as the bot sends none: the anonymous tenant from loopback."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.e2e.conftest import Stack
from tests.e2e.seed_stack_bots import start_stack

pytestmark = pytest.mark.slow
USER = "user123"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_lora: Path) -> Iterator[Stack]:
    yield from start_stack(tmp_path_factory.mktemp("a1111bot"), tiny_lora, "none")


def bot(stack: Stack) -> str:
    return f"{stack.url}/a1111"


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def follow(stack: Stack, job_id: str, timeout: float = 120) -> tuple[list[str], dict]:
    """The README's status loop: /jobs/{id} until completed or failed, then /jobs/{id}/result."""
    seen, deadline = [], time.monotonic() + timeout
    while True:
        status = requests.get(f"{bot(stack)}/jobs/{job_id}", timeout=10).json()
        print(f"Status: {status['status']}, Progress: {status.get('progress', 0):.1%}")  # the README's line
        assert set(status) >= {"job_id", "status", "progress", "eta_relative", "message", "created_at",
                               "completed_at"}
        assert 0.0 <= status["progress"] <= 1.0
        seen.append(status["status"])
        if status["status"] in ("completed", "failed"):
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert set(seen) <= {"queued", "processing", "completed", "failed"}
    if status["status"] == "completed":
        assert status["progress"] == 1.0 and status["completed_at"]
    result = requests.get(f"{bot(stack)}/jobs/{job_id}/result", timeout=30)
    assert result.status_code == 200
    return seen, result.json()


def test_health_and_models(stack: Stack):
    health = requests.get(f"{bot(stack)}/health", timeout=10).json()
    assert health["status"] == "healthy" and health["a1111_status"]["status"] == "online" and health["timestamp"]
    models = requests.get(f"{bot(stack)}/models", timeout=10).json()
    assert set(models) == {"checkpoints", "vaes", "samplers", "upscalers"}
    assert models["checkpoints"] == ["tiny-sd"] and "DPM++ 2M Karras" in models["samplers"]


def test_lora_search_and_scan(stack: Stack):
    found = requests.get(f"{bot(stack)}/loras", params={"search": "fox", "limit": 10}, timeout=10).json()
    assert found["total"] == len(found["loras"]) >= 1
    [fox] = [lora for lora in found["loras"] if lora["name"] == "fox"]
    assert set(fox) >= {"filename", "name", "tags", "trigger_words", "strength_range", "description", "thumbnail",
                        "civitai_id"}
    assert fox["filename"] == "fox.safetensors"
    assert requests.get(f"{bot(stack)}/loras", params={"search": "anime", "limit": 10}, timeout=10).status_code == 200
    scanned = requests.post(f"{bot(stack)}/loras/scan", timeout=30).json()
    assert scanned["message"] == f"Scanned and found {scanned['details']['count']} LoRAs"
    assert scanned["details"]["rescanned"] is False
    assert requests.post(f"{bot(stack)}/loras/scan", headers=stack.auth, timeout=30).json()["details"]["rescanned"]


def test_sessions_add_remove_clear_and_validation(stack: Stack):
    base = bot(stack)
    session = requests.get(f"{base}/sessions/{USER}", timeout=10).json()
    assert session == {"user_id": USER, "active_loras": {}, "controlnet_configs": [], "custom_settings": {},
                       "last_updated": session["last_updated"]}
    # The README's call names a file this library does not hold: refused, naming the field.
    missing = requests.post(f"{base}/sessions/{USER}/loras", json={"filename": "character_lora.safetensors",
                                                                   "weight": 0.8}, timeout=10)
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "filename"]
    for weight in (0.05, 2.5):
        assert requests.post(f"{base}/sessions/{USER}/loras", json={"filename": "fox.safetensors", "weight": weight},
                             timeout=10).status_code == 422
    added = requests.post(f"{base}/sessions/{USER}/loras", json={"filename": "fox.safetensors", "weight": 0.8},
                          timeout=10).json()
    assert added["message"] == "LoRA added to session"
    assert added["session"]["active_loras"] == {"fox.safetensors": 0.8}
    removed = requests.delete(f"{base}/sessions/{USER}/loras/fox.safetensors", timeout=10)
    assert removed.json() == {"message": "LoRA removed from session"}
    again = requests.delete(f"{base}/sessions/{USER}/loras/fox.safetensors", timeout=10)
    assert again.status_code == 404 and again.json() == {"detail": "LoRA not found in session"}
    requests.post(f"{base}/sessions/{USER}/loras", json={"filename": "fox", "weight": 0.5}, timeout=10)
    cleared = requests.delete(f"{base}/sessions/{USER}/loras", timeout=10)
    assert cleared.json() == {"message": "All LoRAs cleared from session"}
    assert requests.get(f"{base}/sessions/{USER}", timeout=10).json()["active_loras"] == {}
    merged = requests.post(f"{base}/sessions/{USER}/settings", json={"preferred_sampler": "DPM++ 2M Karras",
                                                                     "default_steps": 20}, timeout=10).json()
    assert merged["session"]["custom_settings"] == {"preferred_sampler": "DPM++ 2M Karras", "default_steps": 20}
    refused = requests.post(f"{base}/sessions/{USER}/settings", json={"clip_skip": 2}, timeout=10)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "clip_skip"]


def test_presets_save_list_delete(stack: Stack):
    base = bot(stack)
    saved = requests.post(f"{base}/presets/{USER}", json={
        "name": "anime portrait", "description": "my defaults",
        "config": {"sampler_name": "Euler a", "steps": 3, "cfg_scale": 6.0, "width": 64, "height": 64,
                   "active_loras": {"fox.safetensors": 0.7}}}, timeout=10).json()
    assert saved["message"] == "Preset saved" and saved["preset_id"]
    listed = requests.get(f"{base}/presets/{USER}", timeout=10).json()["presets"]
    [preset] = [p for p in listed if p["preset_id"] == saved["preset_id"]]
    assert set(preset) >= {"preset_id", "name", "description", "config", "created_at", "last_used"}
    assert preset["config"] == {"preferred_sampler": "Euler a", "default_steps": 3, "cfg_scale": 6.0, "width": 64,
                                "height": 64, "active_loras": {"fox.safetensors": 0.7}}
    assert requests.get(f"{base}/presets/someone-else", timeout=10).json() == {"presets": []}
    assert requests.delete(f"{base}/presets/someone-else/{saved['preset_id']}", timeout=10).status_code == 404
    assert requests.delete(f"{base}/presets/{USER}/{saved['preset_id']}", timeout=10).json() == {
        "message": "Preset deleted"}
    gone = requests.delete(f"{base}/presets/{USER}/{saved['preset_id']}", timeout=10)
    assert gone.status_code == 404 and gone.json() == {"detail": "Preset not found"}


def test_txt2img_with_every_field_follows_the_job_to_base64_pngs(stack: Stack):
    """The README's "Generation Request Example" (every field; its checkpoint and VAE are not here:
    the default model and its own VAE), made small; then its status loop and result."""
    answer = requests.post(f"{bot(stack)}/generate/txt2img", json={
        "user_id": USER, "prompt": "masterpiece, detailed anime portrait", "negative_prompt": "low quality, blurry",
        "checkpoint": "animefull_final.safetensors", "vae": "vae-ft-mse-840000-ema-pruned.safetensors",
        "sampler_name": "DPM++ 2M Karras", "steps": 2, "cfg_scale": 7.0, "width": 64, "height": 64,
        "batch_count": 1, "batch_size": 2, "seed": 1234, "enable_hr": True, "hr_scale": 2.0,
        "hr_upscaler": "4x-UltraSharp"}, timeout=10)
    assert answer.status_code == 200
    body = answer.json()
    assert body == {"job_id": body["job_id"], "status": "queued", "message": "Generation queued successfully",
                    "estimated_time": body["estimated_time"]}
    _, result = follow(stack, body["job_id"])
    assert result["status"] == "completed" and result["error"] is None
    assert set(result) >= {"job_id", "status", "images", "info", "parameters", "error"}
    assert len(result["images"]) == 2
    for encoded in result["images"]:
        assert not encoded.startswith("data:")
        assert _png(base64.b64decode(encoded, validate=True)).size == (128, 128)  # hires fix x2
    info = result["info"]
    assert isinstance(info, dict) and info["seed"] == 1234 and info["all_seeds"] == [1234, 1235]
    assert info["sampler_name"] == "DPM++ 2M Karras" and info["sd_model_name"] == "tiny-sd"
    assert result["parameters"]["prompt"].startswith("masterpiece")


def test_session_loras_and_custom_settings_apply_and_nulls_are_accepted(stack: Stack):
    base = bot(stack)
    requests.post(f"{base}/sessions/{USER}/loras", json={"filename": "fox.safetensors", "weight": 0.8}, timeout=10)
    requests.post(f"{base}/sessions/{USER}/settings", json={"default_steps": 2, "width": 64, "height": 64},
                  timeout=10)
    answer = requests.post(f"{base}/generate/txt2img", json={
        "user_id": USER, "prompt": "beautiful anime girl, detailed face", "negative_prompt": None,
        "checkpoint": None, "vae": None, "sampler_name": None, "steps": None, "cfg_scale": None, "width": None,
        "height": None, "batch_count": None, "batch_size": None, "seed": None, "enable_hr": None, "hr_scale": None,
        "hr_upscaler": None, "hr_second_pass_steps": None, "denoising_strength": None}, timeout=10)
    assert answer.status_code == 200, answer.text
    _, result = follow(stack, answer.json()["job_id"])
    assert result["status"] == "completed"
    info = result["info"]
    assert info["prompt"] == "beautiful anime girl, detailed face <lora:fox:0.8>"  # appended, as the bot does
    assert info["steps"] == 2 and (info["width"], info["height"]) == (64, 64)  # from custom_settings
    assert _png(base64.b64decode(result["images"][0])).size == (64, 64)


def test_result_is_404_until_the_job_ends_and_a_cancelled_job_failed(stack: Stack):
    answer = requests.post(f"{bot(stack)}/generate/txt2img", json={
        "user_id": "slow-user", "prompt": "slow", "steps": 150, "width": 512, "height": 512, "batch_count": 2,
        "batch_size": 4}, timeout=10).json()
    job_id = answer["job_id"]
    early = requests.get(f"{bot(stack)}/jobs/{job_id}/result", timeout=10)
    assert early.status_code == 404 and early.json() == {"detail": "Job result not available"}
    with stack.client() as admin:
        assert admin.delete(f"/v1/jobs/{job_id}").status_code == 202
    _, result = follow(stack, job_id)
    assert result["status"] == "failed" and result["images"] == [] and "cancel" in result["error"]
    missing = requests.get(f"{bot(stack)}/jobs/00000000-0000-0000-0000-000000000000", timeout=10)
    assert missing.status_code == 404 and missing.json() == {"detail": "Job not found"}


def test_img2img_multipart_as_a_json_field_or_flat_fields(stack: Stack):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    request = {"user_id": "painter", "prompt": "a red square, watercolor", "steps": 2, "denoising_strength": 0.5}
    for data in ({"request": json.dumps(request)}, {k: str(v) for k, v in request.items()}):
        answer = requests.post(f"{bot(stack)}/generate/img2img", files={"image": ("in.png", buffer.getvalue(),
                                                                                  "image/png")}, data=data, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "queued"
        _, result = follow(stack, answer.json()["job_id"])
        assert result["status"] == "completed" and result["info"]["denoising_strength"] == 0.5
        assert _png(base64.b64decode(result["images"][0])).size == (64, 64)
    no_image = requests.post(f"{bot(stack)}/generate/img2img", data={"request": json.dumps(request)}, timeout=10)
    assert no_image.status_code in (400, 422)


def test_controlnet_and_regional_are_501(stack: Stack):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG")
    controlnet = requests.post(f"{bot(stack)}/generate/controlnet", files={"image": ("pose.png", buffer.getvalue())},
                               data={"user_id": USER, "prompt": "detailed portrait, studio lighting"}, timeout=10)
    regional = requests.post(f"{bot(stack)}/generate/regional", json={
        "user_id": USER, "prompt": "masterpiece, high quality", "regional_config": {
            "layout": "three_columns", "common_prompt": "fantasy tavern scene",
            "region1_prompt": "knight in armor drinking", "region2_prompt": "fireplace with warm lighting",
            "region3_prompt": "bard playing lute"}, "width": 768, "height": 512, "steps": 25}, timeout=10)
    models = requests.get(f"{bot(stack)}/controlnet/models", timeout=10)
    for answer in (controlnet, regional, models):
        assert answer.status_code == 501 and "not supported" in answer.json()["detail"]


def test_validation_errors_are_fastapi_shaped(stack: Stack):
    base = bot(stack)
    for body, field in (({"prompt": "x"}, None), ({"user_id": USER, "prompt": "x", "steps": 151}, "steps"),
                        ({"user_id": USER, "prompt": "x", "cfg_scale": 0.5}, "cfg_scale"),
                        ({"user_id": USER, "prompt": "x", "batch_count": 10, "batch_size": 4}, "batch_count"),
                        ({"user_id": USER, "prompt": "x", "sampler_name": "Nope"}, "sampler_name")):
        answer = requests.post(f"{base}/generate/txt2img", json=body, timeout=10)
        assert answer.status_code == 422, answer.text
        items = answer.json()["detail"]
        assert isinstance(items, list) and {"loc", "msg", "type"} <= set(items[0])
        if field:
            assert field in items[0]["loc"] or field in items[0]["msg"]


def test_a_darkroom_key_is_accepted(stack: Stack):
    answer = requests.post(f"{bot(stack)}/generate/txt2img", headers=stack.auth, json={
        "user_id": "keyed", "prompt": "keyed", "steps": 1, "width": 64, "height": 64}, timeout=10)
    assert answer.status_code == 200
    job_id = answer.json()["job_id"]
    assert requests.get(f"{bot(stack)}/jobs/{job_id}", headers=stack.auth, timeout=10).status_code == 200
    assert requests.get(f"{bot(stack)}/jobs/{job_id}", timeout=10).status_code == 404  # another tenant's
