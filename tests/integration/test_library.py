"""The users' library in the ingress: the LoRA index (live rescan, fuzzy search, metadata, family
check), sessions and presets (tenancy, persistence, precedence), and the enricher's optional
LLM against a real loopback HTTP server. Real broker, real files."""

from __future__ import annotations

import hashlib
import os

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from ops import keys
from schemas.events import JobAccepted, JobEnriched
from schemas.layout import DataLayout
from services.enricher.main import main as enricher_main
from services.ingress.app import create_app
from tests.library_support import FakeLlm, kohya_metadata, write_lora
from tests.support import running, wait_for
from tests.unit.test_events import SPEC


@pytest.fixture
def secured(settings):
    secured = msgspec.structs.replace(settings, auth="on", key_rate="none", key_daily_images=0, key_queued_jobs=0)
    state = DataLayout(secured.data_dir).state_dir
    tokens = {name: keys.create(state, name, admin=name == "root")[1] for name in ("alice", "bob", "root")}
    return secured, {name: {"Authorization": f"Bearer {token}"} for name, token in tokens.items()}


@pytest.fixture
async def client(secured, bus):
    settings, _ = secured
    async with AsyncTestClient(app=create_app(settings)) as client:
        await wait_for(lambda: client.app.state.bus.connected, what="ingress connected")
        yield client


async def _found(client, headers, query: str, **params) -> list[str]:
    answer = await client.get("/v1/loras", params={"search": query, **params}, headers=headers)
    assert answer.status_code == 200, answer.text
    return [lora["name"] for lora in answer.json()["loras"]]


async def test_a_lora_dropped_in_the_folder_is_indexed_searchable_renamed_and_removed_live(client, secured):
    settings, who = secured
    folder = DataLayout(settings.data_dir).loras_dir
    path = write_lora(folder / "foxstyle_v2.safetensors", kohya_metadata())
    (folder / "foxstyle_v2.preview.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    write_lora(folder / "neon-city.safetensors", kohya_metadata("sdxl_base_v1-0", "8_neonpunk", {"neon": 5}))

    async def names(query, **params):
        return await _found(client, who["alice"], query, **params)

    await wait_for(lambda: "foxstyle_v2" in client.app.state.library.view.entries, what="the watcher to index it")
    assert await names("foxstyle") == ["foxstyle_v2"]
    assert await names("fxostyle") == ["foxstyle_v2"], "a misspelt name still finds it"
    assert await names("fox sty") == ["foxstyle_v2"], "a prefix, as typed in an autocomplete box"
    assert await names("red fur") == ["foxstyle_v2"], "a tag"
    assert await names("neonpnuk") == ["neon-city"], "a misspelt trigger word"
    assert await names("fox", base="sdxl") == []
    assert await names("neon", base="sdxl") == ["neon-city"]
    everything = (await client.get("/v1/loras", params={"limit": 1}, headers=who["alice"])).json()
    assert [lo["name"] for lo in everything["loras"]] == ["foxstyle_v2"] and everything["total"] == 2
    second = (await client.get("/v1/loras", params={"limit": 1, "cursor": everything["next_cursor"]},
                               headers=who["alice"])).json()
    assert [lo["name"] for lo in second["loras"]] == ["neon-city"] and second["next_cursor"] is None

    info = (await client.get("/v1/loras/foxstyle_v2", headers=who["bob"])).json()
    assert info["base"] == "sd1" and info["base_model"] == "sd_v1"
    assert info["trigger_words"] == ["foxstyle"] and info["tags"][:3] == ["foxstyle", "red fur", "forest"]
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["size_bytes"] == path.stat().st_size and info["metadata"]["ss_network_dim"] == "4"
    assert info["preview_url"] == "/v1/loras/foxstyle_v2/preview"
    preview = await client.get(info["preview_url"], headers=who["bob"])
    assert preview.status_code == 200 and preview.content.startswith(b"\x89PNG")

    path.rename(folder / "vulpine.safetensors")
    await wait_for(lambda: "vulpine" in client.app.state.library.view.entries, what="the rename")
    assert await names("foxstyle") == ["vulpine"], "found by its tags under its new name"
    assert (await client.get("/v1/loras/vulpine", headers=who["bob"])).json()["sha256"] == info["sha256"]
    assert (await client.get("/v1/loras/foxstyle_v2", headers=who["bob"])).status_code == 404

    (folder / "vulpine.safetensors").unlink()
    await wait_for(lambda: "vulpine" not in client.app.state.library.view.entries, what="the removal")
    assert await names("foxstyle") == []

    assert (await client.post("/v1/loras/scan", headers=who["alice"])).status_code == 403
    write_lora(folder / "late.safetensors", kohya_metadata())
    scan = (await client.post("/v1/loras/scan", headers=who["root"])).json()
    assert scan["total"] == 2 and scan["removed"] == [] and scan["added"] in (["late"], [])
    # The sha256 cache survives a restart: a new index reads it instead of hashing again.
    assert (DataLayout(settings.data_dir).state_dir / "loras" / "index.json").exists()


async def test_a_lora_for_another_model_family_is_refused_at_submit_naming_it(client, secured):
    settings, who = secured
    folder = DataLayout(settings.data_dir).loras_dir
    write_lora(folder / "xl-only.safetensors", kohya_metadata("sdxl_base_v1-0"))
    answer = await client.post("/v1/jobs", json={"prompt": "x", "loras": [{"name": "xl-only"}]}, headers=who["alice"])
    assert answer.status_code == 400
    assert answer.json()["message"] == ("loras[0].name: LoRA 'xl-only' is for sdxl models; model 'tiny-sd' is "
                                        "sd1.x (sd1)")


async def test_sessions_belong_to_their_key_survive_a_restart_and_hold_loras(client, secured, bus):
    settings, who = secured
    folder = DataLayout(settings.data_dir).loras_dir
    write_lora(folder / "fox.safetensors", kohya_metadata())
    write_lora(folder / "owl.safetensors", kohya_metadata(dataset="5_owl"))
    body = {"model": "tiny-sd", "settings": {"num_inference_steps": 3}, "style": "anime"}
    created = await client.put("/v1/sessions/studio", json=body, headers=who["alice"])
    assert created.status_code == 201 and created.json()["settings"]["num_inference_steps"] == 3
    assert (await client.put("/v1/sessions/studio", json=body, headers=who["alice"])).status_code == 200
    for name, weight in (("fox.safetensors", 0.5), ("owl", 1.0), ("fox", 0.8)):
        added = await client.post("/v1/sessions/studio/loras", json={"name": name, "weight": weight},
                                  headers=who["alice"])
        assert added.status_code == 200, added.text
    assert added.json()["loras"] == [{"name": "owl", "weight": 1.0}, {"name": "fox", "weight": 0.8}]
    missing = await client.post("/v1/sessions/studio/loras", json={"name": "nope"}, headers=who["alice"])
    assert missing.status_code == 400 and "unknown LoRA 'nope'" in missing.json()["message"]

    # Bob sees none of it, and his own "studio" is another session.
    for method, path in (("GET", "/v1/sessions/studio"), ("DELETE", "/v1/sessions/studio"),
                         ("POST", "/v1/sessions/studio/loras"), ("DELETE", "/v1/sessions/studio/loras/fox")):
        answer = await client.request(method, path, headers=who["bob"], json={"name": "fox"} if method == "POST" else None)
        assert answer.status_code == 404 and answer.json()["message"] == "session 'studio' not found", (method, path)
    job = await client.post("/v1/jobs", json={"prompt": "x", "session": "studio"}, headers=who["bob"])
    assert job.status_code == 400 and job.json()["message"].startswith("session: no session 'studio'")
    bad = await client.put("/v1/sessions/..%2Fx", json={}, headers=who["bob"])
    assert bad.status_code in (400, 404)

    # Restart: a new ingress over the same files.
    async with AsyncTestClient(app=create_app(settings)) as again:
        kept = (await again.get("/v1/sessions/studio", headers=who["alice"])).json()
        assert kept["loras"] == [{"name": "owl", "weight": 1.0}, {"name": "fox", "weight": 0.8}]
        assert kept["owner"] is not None and kept["style"] == "anime"
    removed = await client.delete("/v1/sessions/studio/loras/owl", headers=who["alice"])
    assert removed.json()["loras"] == [{"name": "fox", "weight": 0.8}]
    assert (await client.delete("/v1/sessions/studio/loras/owl", headers=who["alice"])).status_code == 404
    assert (await client.delete("/v1/sessions/studio/loras", headers=who["alice"])).json()["loras"] == []
    assert (await client.delete("/v1/sessions/studio", headers=who["alice"])).status_code == 204
    assert (await client.get("/v1/sessions/studio", headers=who["alice"])).status_code == 404


async def test_presets_are_private_and_precedence_is_job_then_session_then_preset_then_model(client, secured, tap):
    settings, who = secured
    folder = DataLayout(settings.data_dir).loras_dir
    for name in ("fox", "owl", "bee"):
        write_lora(folder / f"{name}.safetensors", kohya_metadata(dataset=f"1_{name}"))
    preset = await client.post("/v1/presets", json={
        "name": "Fox look", "style": "fantasy", "negative_prompt": "from preset",
        "settings": {"num_inference_steps": 5, "guidance_scale": 3.0, "width": 128, "sampler": "DDIM"},
        "loras": [{"name": "fox", "weight": 0.3}, {"name": "bee", "weight": 0.4}]}, headers=who["alice"])
    assert preset.status_code == 201, preset.text
    preset_id = preset.json()["id"]
    assert preset_id.startswith("Fox-look-")
    assert [p["id"] for p in (await client.get("/v1/presets", headers=who["alice"])).json()["presets"]] == [preset_id]
    assert (await client.get("/v1/presets", headers=who["bob"])).json()["presets"] == []
    assert (await client.get(f"/v1/presets/{preset_id}", headers=who["bob"])).status_code == 404
    assert (await client.put(f"/v1/presets/{preset_id}", json={}, headers=who["bob"])).status_code == 201, \
        "bob's own preset of that id, not alice's"
    assert (await client.get(f"/v1/presets/{preset_id}", headers=who["alice"])).json()["style"] == "fantasy"
    taken = await client.post("/v1/presets", json={"id": preset_id}, headers=who["alice"])
    assert taken.status_code == 409
    bad = await client.post("/v1/presets", json={"model": "nope"}, headers=who["alice"])
    assert bad.status_code == 400 and bad.json()["message"].startswith("model: unknown model 'nope'")

    await client.put("/v1/sessions/s1", json={
        "settings": {"num_inference_steps": 4, "height": 64}, "style": "anime",
        "loras": [{"name": "owl", "weight": 0.6}, {"name": "fox", "weight": 0.9}]}, headers=who["alice"])
    answer = await client.post("/v1/jobs", json={
        "prompt": "a fox", "session": "s1", "preset": preset_id, "settings": {"num_inference_steps": 2},
        "loras": [{"name": "bee", "weight": 1.0}]}, headers=who["alice"])
    assert answer.status_code == 202, answer.text
    [accepted] = await tap.wait(JobAccepted, answer.json()["id"])
    spec = accepted.spec
    got = spec.settings
    assert got.num_inference_steps == 2, "the job's own value wins"
    assert got.height == 64 and spec.style == "anime", "then the session's"
    assert got.width == 128 and got.guidance_scale == 3.0 and got.sampler == "DDIM", "then the preset's"
    assert spec.negative_prompt == "from preset" and spec.model == "tiny-sd"
    assert got.num_images == 1, "then the model's defaults"
    assert [(lo.name, lo.weight) for lo in spec.loras] == [("bee", 1.0), ("owl", 0.6), ("fox", 0.9)]
    assert spec.applied.session == "s1" and spec.applied.preset == preset_id
    assert spec.applied.fields == {
        "style": "session", "negative_prompt": "preset", "settings.height": "session",
        "settings.width": "preset", "settings.guidance_scale": "preset", "settings.sampler": "preset",
        "loras.owl": "session", "loras.fox": "session"}
    document = (await client.get(f"/v1/jobs/{accepted.job_id}", headers=who["alice"])).json()
    assert document["applied"]["fields"]["settings.width"] == "preset"

    bobs = await client.post("/v1/jobs", json={"prompt": "x", "preset": "Fox-look-nope"}, headers=who["bob"])
    assert bobs.status_code == 400 and bobs.json()["message"] == "preset: no preset 'Fox-look-nope'"
    assert (await client.delete(f"/v1/presets/{preset_id}", headers=who["alice"])).status_code == 204


@pytest.mark.parametrize("outcome", ["answers", "times out", "fails"])
async def test_the_enricher_asks_the_llm_and_falls_back_to_the_template(settings, bus, tap, outcome):
    with FakeLlm() as llm:
        llm.delay = 3.0 if outcome == "times out" else 0.0
        llm.status = 500 if outcome == "fails" else 200
        (DataLayout(settings.data_dir).base / "darkroom.toml").write_text(
            f'[enrichment.llm]\nurl = "{llm.url}"\nmodel = "fake-7b"\ntimeout_s = 0.5\nretries = 1\n'
            f'api_key_env = "DARKROOM_TEST_LLM_KEY"\n')
        os.environ["DARKROOM_TEST_LLM_KEY"] = "sk-test"
        try:
            async with running(enricher_main, settings, "enricher", bus):
                spec = msgspec.structs.replace(SPEC, prompt="a fox", style="anime", negative_prompt=None)
                await bus.publish(JobAccepted(job_id="j1", spec=spec))
                [enriched] = await tap.wait(JobEnriched, "j1", timeout=20)
        finally:
            os.environ.pop("DARKROOM_TEST_LLM_KEY", None)
    assert llm.requests and llm.requests[0]["path"] == "/v1/chat/completions"
    sent = llm.requests[0]["body"]
    assert sent["model"] == "fake-7b" and sent["messages"][-1] == {"role": "user", "content": "a fox"}
    assert "anime" in sent["messages"][0]["content"] and llm.requests[0]["auth"] == "Bearer sk-test"
    if outcome == "answers":
        assert enriched.prompt == "a fox, rewritten by the LLM, cel shaded"
        assert enriched.enrichment.path == "llm" and enriched.enrichment.attempts == 1
    else:
        assert enriched.prompt.startswith("a fox, anime style"), "the template, as without an LLM"
        assert enriched.enrichment.path == "template" and enriched.enrichment.attempts == 2 == len(llm.requests)
        assert ("timed out after 0.5 s" if outcome == "times out" else "500") in enriched.enrichment.error
    assert enriched.negative_prompt == "photorealistic, blurry, extra limbs"
