"""Live events, webhooks and the AsyncAPI contract, without I/O: the committed document is
current, stream forms carry no bytes, the fan-out respects tenants, signatures verify with the
`standardwebhooks` package, private addresses are refused."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import standardwebhooks

from schemas.asyncapi import asyncapi_document
from schemas.events import EVENT_TYPES, ImageGenerated, JobAccepted, JobProgressed, WebhookDelivered, WebhookFailed
from schemas.jobs import GenerationSettings, ImageMetadata, JobDocument, JobSpec
from schemas.keys import new_webhook_secret
from schemas.layout import DataLayout
from schemas.lifecycle import apply_event
from schemas.webhooks import WebhookTarget
from services import webhooks
from services.ingress.live import Follower, Live, Subscription, stream_form

ASYNCAPI_FILE = Path(__file__).parents[2] / "schemas" / "asyncapi.json"
JOB = "0b5e3c1e-9d7a-4c52-8f0e-5a1d2c3b4a69"
SETTINGS = GenerationSettings(num_images=1, num_inference_steps=4, guidance_scale=7.0, width=64, height=64, seed=1)


def spec(owner: str | None = "alice", webhook: WebhookTarget | None = None) -> JobSpec:
    return JobSpec(prompt="a fox", model="tiny-sd", settings=SETTINGS, owner=owner, webhook=webhook)


def test_committed_asyncapi_is_current():
    committed = json.loads(ASYNCAPI_FILE.read_text())
    assert committed == json.loads(json.dumps(asyncapi_document())), (
        "schemas/asyncapi.json is stale: regenerate it with `darkroom schema --asyncapi > schemas/asyncapi.json`")


def test_asyncapi_names_every_event_with_its_exchange_and_an_example():
    document = asyncapi_document()
    for cls in EVENT_TYPES:
        key = cls.__struct_config__.tag
        channel = document["channels"][key]
        assert channel["bindings"]["amqp"]["exchange"]["name"] == "darkroom.events"
        assert channel["bindings"]["amqp"]["exchange"]["type"] == "topic"
        message = document["components"]["messages"][cls.__name__]
        assert message["examples"][0]["payload"]["type"] == key
        assert document["operations"][f"receive{cls.__name__}"]["action"] == "receive"


def test_streams_carry_urls_never_image_bytes():
    metadata = ImageMetadata(job_id=JOB, model_id="tiny-sd", prompt="a fox", settings=SETTINGS, seed=1,
                             image_number=1, total_images=1)
    generated = ImageGenerated(job_id=JOB, image_id=f"{JOB}_1", image_number=1, total_images=1,
                               job_created_at=datetime.now(UTC), worker="w", width=64, height=64,
                               png=b"\x89PNG" * 1000, metadata=metadata)
    body = json.loads(stream_form(generated).data)
    assert "png" not in body and body["image_url"] == f"/v1/images/{JOB}_1"
    progressed = json.loads(stream_form(JobProgressed(job_id=JOB, step=2, total_steps=4, preview=b"x")).data)
    assert "preview" not in progressed and progressed["preview_url"] == f"/v1/jobs/{JOB}/preview"


async def test_fan_out_gives_each_tenant_only_its_events(tmp_path):
    live = Live(DataLayout(str(tmp_path)))
    alice = live.add(Follower(owner="alice", admin=False, subscriptions={Subscription(pattern="job.*")}))
    bob = live.add(Follower(owner="bob", admin=False, subscriptions={Subscription(pattern="#")}))
    admin = live.add(Follower(owner="root", admin=True, subscriptions={Subscription()}))
    one_job = live.add(Follower(owner="alice", admin=False, subscriptions={Subscription(job=JOB)}))
    await live.publish(JobAccepted(job_id=JOB, spec=spec("alice")))
    await live.publish(JobProgressed(job_id=JOB, step=1, total_steps=4))
    assert [alice.queue.get_nowait().type for _ in range(alice.queue.qsize())] == ["job.accepted", "job.progressed"]
    assert bob.queue.empty()
    assert admin.queue.qsize() == 2 and one_job.queue.qsize() == 2
    live.unsubscribe(alice, Subscription(pattern="job.*"))
    await live.publish(JobProgressed(job_id=JOB, step=2, total_steps=4))
    assert alice.queue.empty() and one_job.queue.qsize() == 3
    live.remove(one_job)
    assert live.followers == 2


async def test_a_follower_too_far_behind_is_dropped(tmp_path):
    live = Live(DataLayout(str(tmp_path)))
    slow = live.add(Follower(owner=None, admin=True, subscriptions={Subscription()}, queue=asyncio.Queue(2)))
    for step in range(3):
        await live.publish(JobProgressed(job_id=JOB, step=step, total_steps=4))
    assert slow.lost and live.followers == 0


def test_webhook_deliveries_fold_into_the_document_even_after_the_job_ended():
    target = WebhookTarget(url="https://example.com/hook")
    doc = JobDocument.new(JOB, spec(webhook=target), datetime.now(UTC))
    doc.status = "completed"
    failed = WebhookFailed(job_id=JOB, webhook_id="e1", for_event="job.completed", url=target.url, tries=3,
                           error="answered HTTP 500", status_code=500)
    doc = apply_event(doc, failed)
    assert doc.webhook.status == "failed" and doc.webhook.tries == 3 and doc.webhook.failed == 1
    doc = apply_event(doc, WebhookDelivered(job_id=JOB, webhook_id="e2", for_event="job.completed",
                                            url=target.url, tries=1, status_code=204))
    assert doc.webhook.status == "delivered" and doc.webhook.error is None and doc.webhook.delivered == 1
    assert doc.spec().webhook == target


def test_signatures_verify_with_the_standard_webhooks_package():
    secret = new_webhook_secret()
    body = b'{"id":"x","status":"completed"}'
    headers = webhooks.headers(secret, "msg_1", body)
    assert standardwebhooks.Webhook(secret).verify(body, headers) == {"id": "x", "status": "completed"}
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_webhook_secret()).verify(body, headers)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://10.1.2.3/hook", "http://192.168.0.5/", "http://169.254.169.254/latest/meta-data",
    "http://[::1]:8080/", "http://[fd00::1]/", "http://0.0.0.0/", "http://[::ffff:127.0.0.1]/", "http://localhost/",
])
async def test_private_loopback_and_link_local_addresses_are_refused(url):
    with pytest.raises(webhooks.Refused, match="private"):
        await webhooks.check(url, webhooks.AllowList())


@pytest.mark.parametrize("url", ["ftp://example.com/", "http://user:pw@example.com/", "http:///nohost", "not a url"])
async def test_malformed_urls_are_refused(url):
    with pytest.raises(webhooks.Refused):
        await webhooks.check(url, webhooks.AllowList())


async def test_an_operator_allow_list_admits_hosts_and_networks():
    allow = webhooks.AllowList.parse(["127.0.0.0/8", " receiver.internal ", ""])
    assert (await webhooks.check("http://127.0.0.1:9000/hook", allow)).address == ipaddress.ip_address("127.0.0.1")
    assert allow.admits("receiver.internal", ipaddress.ip_address("10.0.0.9"))
    with pytest.raises(webhooks.Refused):
        await webhooks.check("http://10.0.0.9/", allow)
    public = await webhooks.check("http://93.184.215.14/hook", webhooks.AllowList())
    assert public.request_url() == "http://93.184.215.14/hook"
