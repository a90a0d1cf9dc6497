"""A safe public API: keys, tenants, rate limits, quotas, limits, traversal, CORS (real broker, real files)."""

from __future__ import annotations

import base64
import io

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from PIL import Image

from ops import keys
from schemas.layout import DataLayout
from services.ingress.app import create_app
from services.recorder.main import main as recorder_main
from tests.support import eventually, running, wait_for


@pytest.fixture
def secured(settings):
    """Auth on, with small limits, and three keys: alice, bob (users) and root (admin)."""
    secured = msgspec.structs.replace(settings, auth="on", anonymous_rate="2/hour", key_rate="3/minute",
                                      key_daily_images=6, key_queued_jobs=2)
    state = DataLayout(secured.data_dir).state_dir
    tokens = {name: keys.create(state, name, admin=name == "root")[1] for name in ("alice", "bob", "root")}
    return secured, tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def client(secured, bus):
    settings, _ = secured
    async with AsyncTestClient(app=create_app(settings)) as client:
        await wait_for(lambda: client.app.state.bus.connected, what="ingress connected")
        yield client


async def test_requests_without_a_valid_key_are_401(client, secured):
    _settings, tokens = secured
    cases = {
        "no key": {},
        "malformed": {"Authorization": "Bearer not-a-token"},
        "unknown": {"X-API-Key": "drk_000000000000_" + "A" * 43},
        "wrong secret": {"X-API-Key": tokens["alice"][:-4] + "AAAA"},
    }
    for what, headers in cases.items():
        answer = await client.get("/v1/models", headers=headers)
        assert answer.status_code == 401, what
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["status"] == "error" and "API key" in answer.json()["message"], what
    assert (await client.get("/v1/models", headers=bearer(tokens["alice"]))).status_code == 200
    assert (await client.get("/v1/models", headers={"X-API-Key": tokens["alice"]})).status_code == 200
    for public in ("/health", "/schema/openapi.json"):
        assert (await client.get(public)).status_code in (200, 503), public


async def test_a_revoked_key_stops_working_within_a_second(client, secured):
    settings, tokens = secured
    assert (await client.get("/v1/models", headers=bearer(tokens["bob"]))).status_code == 200
    key_id = tokens["bob"].split("_")[1]
    keys.revoke(DataLayout(settings.data_dir).state_dir, key_id)

    async def refused() -> bool:
        return (await client.get("/v1/models", headers=bearer(tokens["bob"]))).status_code == 401

    await eventually(refused, timeout=1.5, what="the revocation to apply within a second")
    answer = await client.get("/v1/models", headers=bearer(tokens["bob"]))
    assert answer.status_code == 401 and answer.json()["message"] == "this API key was revoked"


def _png(size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, 90).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_tenants_see_only_their_own_jobs_and_images(client, secured):
    settings, tokens = secured
    alice, bob, root = (bearer(tokens[n]) for n in ("alice", "bob", "root"))
    job = (await client.post("/v1/jobs", json={"prompt": "alice's fox"}, headers=alice)).json()["id"]
    layout = DataLayout(settings.data_dir)
    doc = msgspec.json.decode(layout.job(job).read_bytes())
    image = layout.image(layout.image_file_path(__import__("datetime").datetime.fromisoformat(doc["created_at"]), f"{job}_1"))
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(_png())
    image.with_suffix(".json").write_bytes(b"{}")

    for path in (f"/v1/jobs/{job}", f"/v1/jobs/{job}/preview", f"/v1/images/{job}_1"):
        answer = await client.get(path, headers=bob)
        assert answer.status_code == 404, path
        assert "not found" in answer.json()["message"] or "no preview" not in answer.json()["message"], path
    unknown = await client.get("/v1/jobs/0c907066-985e-467b-8d11-07419060ef91", headers=bob)
    assert (await client.get(f"/v1/jobs/{job}", headers=bob)).json()["message"].replace(job, "X") == \
        unknown.json()["message"].replace("0c907066-985e-467b-8d11-07419060ef91", "X"), "no hint that it exists"
    assert (await client.delete(f"/v1/jobs/{job}", headers=bob)).status_code == 404
    borrowed = await client.post("/v1/jobs", json={"prompt": "x", "init_image_id": f"{job}_1"}, headers=bob)
    assert borrowed.status_code == 400 and "init_image_id: no image" in borrowed.json()["message"]

    assert (await client.get(f"/v1/jobs/{job}", headers=alice)).json()["owner"] == tokens["alice"].split("_")[1]
    assert (await client.get(f"/v1/jobs/{job}", headers=root)).status_code == 200, "an admin sees every tenant"
    assert (await client.get(f"/v1/images/{job}_1", headers=root)).status_code == 200
    assert (await client.get(f"/v1/images/{job}_1", headers=alice)).status_code == 200


async def test_admin_only_routes_are_403_for_users(client, secured):
    _, tokens = secured
    answer = await client.post("/v1/queue/reset-stalled", headers=bearer(tokens["alice"]))
    assert answer.status_code == 403 and answer.json()["message"] == "this needs an admin key"


async def test_rate_limits_per_key_with_retry_after_and_overrides(client, secured):
    settings, tokens = secured
    alice, bob = bearer(tokens["alice"]), bearer(tokens["bob"])
    # Nothing runs these jobs: without this, alice's queued-jobs quota (2) would refuse the third.
    keys.update(DataLayout(settings.data_dir).state_dir, tokens["alice"].split("_")[1], queued_jobs=0)
    assert (await client.post("/v1/jobs", json={"prompt": "x", "steps": 1}, headers=alice)).status_code == 400
    for n in range(3):  # the bad request above did not count
        assert (await client.post("/v1/jobs", json={"prompt": f"fox {n}"}, headers=alice)).status_code in (202, 429)
    limited = await client.post("/v1/jobs", json={"prompt": "one more"}, headers=alice)
    assert limited.status_code == 429
    wait = int(limited.headers["retry-after"])
    assert 1 <= wait <= 61
    assert limited.json()["message"].startswith("rate limit reached: 3 generation requests per minute for this key")
    assert "try again in" in limited.json()["message"]
    assert (await client.post("/v1/jobs", json={"prompt": "bob's"}, headers=bob)).status_code == 202, "per key"

    # An override takes effect within a second; a new rate counts from its own fresh window.
    keys.update(DataLayout(settings.data_dir).state_dir, tokens["bob"].split("_")[1], rate="1/hour")
    async def new_rate() -> bool:
        return (await client.get("/v1/quota", headers=bob)).json()["limits"]["hourly_requests"] == 1

    await eventually(new_rate, what="the new rate to apply")
    assert (await client.post("/v1/jobs", json={"prompt": "bob again"}, headers=bob)).status_code == 202
    over = await client.post("/v1/jobs", json={"prompt": "bob once more"}, headers=bob)
    assert over.status_code == 429 and "1 generation requests per hour" in over.json()["message"]


async def test_anonymous_callers_are_limited_per_address(settings, bus):
    sandbox = msgspec.structs.replace(settings, auth="off", anonymous_rate="2/hour")
    async with AsyncTestClient(app=create_app(sandbox)) as client:
        await wait_for(lambda: client.app.state.bus.connected)
        answers = [await client.post("/v1/jobs", json={"prompt": f"anon {n}"}) for n in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 429]
    assert "2 generation requests per hour for your address" in answers[2].json()["message"]
    assert int(answers[2].headers["retry-after"]) > 60


async def test_daily_image_quota_and_the_quota_report(client, secured):
    _, tokens = secured
    alice, root = bearer(tokens["alice"]), bearer(tokens["root"])
    assert (await client.post("/v1/jobs", json={"prompt": "x", "settings": {"num_images": 4}}, headers=alice)).status_code == 202
    over = await client.post("/v1/jobs", json={"prompt": "x", "settings": {"num_images": 3}}, headers=alice)
    assert over.status_code == 429 and int(over.headers["retry-after"]) > 0
    assert over.json()["message"].startswith("daily image quota reached: 4 of 6 images used today (UTC), this job asks for 3")
    assert (await client.post("/v1/jobs", json={"prompt": "x", "settings": {"num_images": 2}}, headers=alice)).status_code == 202
    report = (await client.get("/v1/quota", headers=alice)).json()
    assert report["isPremium"] is False
    assert report["limits"] == {"queued_jobs": 2, "daily_images": 6, "hourly_requests": 3}
    assert report["usage"]["daily_images"] == 6 and report["remaining"]["daily_images"] == 0
    assert report["usage"]["hourly_requests"] == 2 and report["remaining"]["hourly_requests"] == 1
    admin = (await client.get("/v1/quota", headers=root)).json()
    assert admin["isPremium"] is True and admin["limits"]["daily_images"] == "Infinity"


async def test_queued_jobs_quota_counts_what_is_pending_or_processing(secured, bus):
    settings, tokens = secured
    alice = bearer(tokens["alice"])
    layout = DataLayout(settings.data_dir)
    async with running(recorder_main, settings, "recorder", bus):
        async with AsyncTestClient(app=create_app(settings)) as client:
            await wait_for(lambda: client.app.state.bus.connected)
            first = [(await client.post("/v1/jobs", json={"prompt": f"q{n}"}, headers=alice)) for n in range(2)]
            assert [a.status_code for a in first] == [202, 202]
            await wait_for(lambda: layout.queue_file.exists() and len(layout.queue_file.read_text().split()) == 2,
                           what="the recorder to list both in queue.txt")
            third = await client.post("/v1/jobs", json={"prompt": "q3"}, headers=alice)
            report = (await client.get("/v1/quota", headers=alice)).json()
    assert third.status_code == 429
    assert third.json()["message"].startswith("too many jobs in the queue: 2 pending or processing, the limit is 2")
    assert report["usage"]["queued_jobs"] == 2 and report["remaining"]["queued_jobs"] == 0


async def test_a_body_over_the_limit_is_413(secured, bus):
    settings, tokens = secured
    small = msgspec.structs.replace(settings, max_body_bytes=10_000)
    async with AsyncTestClient(app=create_app(small)) as client:
        await wait_for(lambda: client.app.state.bus.connected)
        big = base64.b64encode(b"x" * 20_000).decode()
        answer = await client.post("/v1/jobs", json={"prompt": "x", "init_image": big}, headers=bearer(tokens["alice"]))
    assert answer.status_code == 413 and answer.json()["status"] == "error"


TRAVERSALS = ["..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "....%2F%2F....%2F%2Fetc", "%2e%2e%2f%2e%2e%2fstate",
              "0c907066-985e-467b-8d11-07419060ef91%2F..%2F..%2Fkeys", "..", "%00", "x" * 300,
              "0C907066-985E-467B-8D11-07419060EF91"]


@pytest.mark.parametrize("attack", TRAVERSALS)
async def test_no_id_parameter_reaches_outside_its_folder(client, secured, attack):
    _, tokens = secured
    root = bearer(tokens["root"])  # an admin: the strongest caller still gets nothing
    for method, path in (("GET", "/v1/jobs/{}"), ("DELETE", "/v1/jobs/{}"), ("GET", "/v1/jobs/{}/preview"),
                         ("GET", "/v1/images/{}"), ("GET", "/v1/images/{}/metadata")):
        answer = await client.request(method, path.format(attack), headers=root)
        assert answer.status_code == 404, (method, path, attack, answer.text)
        assert answer.json()["status"] == "error"
    for field in ("init_image_id",):
        answer = await client.post("/v1/jobs", json={"prompt": "x", field: attack.replace("%2F", "/")}, headers=root)
        assert answer.status_code == 400 and f"{field}: no image" in answer.json()["message"]
    lora = await client.post("/v1/jobs", json={"prompt": "x", "loras": [{"name": "../../state/keys/x"}]}, headers=root)
    assert lora.status_code == 400 and "unknown LoRA" in lora.json()["message"]


async def test_cors_is_closed_unless_configured(secured, bus):
    settings, _ = secured
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    async with AsyncTestClient(app=create_app(settings)) as client:
        closed = await client.options("/v1/jobs", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    opened = msgspec.structs.replace(settings, cors_origins="https://app.example")
    async with AsyncTestClient(app=create_app(opened)) as client:
        answer = await client.options("/v1/jobs", headers=preflight)
        other = await client.options("/v1/jobs", headers={**preflight, "Origin": "https://evil.example"})
    assert answer.headers["access-control-allow-origin"] == "https://app.example"
    assert other.headers.get("access-control-allow-origin") != "https://evil.example"
