"""Following jobs live on the running stack: SSE from accepted to completed, a reconnect with
Last-Event-ID that loses and repeats nothing, tenants kept apart on /v1/events and /v1/ws,
WebSocket subscribe/unsubscribe, signed webhooks (retried, dead-lettered, refused at submit), the
AsyncAPI document and `darkroom events tail`."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import standardwebhooks
from websockets.sync.client import connect as ws_connect

from ops import deadletters, keys
from schemas.keys import split_token
from schemas.topology import Topology
from tests.e2e.conftest import Stack, darkroom_command
from tests.support import wait_for_sync

TERMINAL = ("job.completed", "job.failed", "job.cancelled")


def submit(client: httpx.Client, steps: int = 12, size: int = 64, **extra) -> str:
    answer = client.post("/v1/jobs", json={"prompt": "a red fox", "settings": {
        "num_inference_steps": steps, "width": size, "height": size, "seed": 7}, **extra})
    assert answer.status_code == 202, answer.text
    assert answer.json()["events_url"] == f"/v1/jobs/{answer.json()['id']}/events"
    return answer.json()["id"]


def sse(response: httpx.Response) -> Iterator[dict]:
    """Parse a server-sent event stream: each event as {id, event, data} (comments as {comment})."""
    event: dict = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in event:
                if "data" in event:
                    event["data"] = json.loads(event["data"])
                yield event
            event = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            event[name] = value[1:] if value.startswith(" ") else value


def follow(stack: Stack, path: str, *, headers: dict | None = None, stop=None, timeout: float = 60) -> list[dict]:
    """Read an SSE stream until it ends (or `stop(event)` says so)."""
    got = []
    with httpx.stream("GET", f"{stack.url}{path}", headers={**stack.auth, **(headers or {})}, timeout=timeout) as answer:
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"].startswith("text/event-stream")
        for event in sse(answer):
            if "comment" in event:
                continue
            got.append(event)
            if stop is not None and stop(event):
                break
    return got


def log_ids(stack: Stack, job_id: str) -> list[str]:
    lines = [json.loads(line) for path in sorted((stack.data_dir / "events").glob("*.jsonl"))
             for line in path.read_text().splitlines()]
    return [line["event_id"] for line in lines if line["job_id"] == job_id and line["type"] != "worker.heartbeat"]


def tenant(stack: Stack, name: str) -> dict[str, str]:
    _, token = keys.create(stack.data_dir / "state", name)
    headers = {"Authorization": f"Bearer {token}"}
    wait_for_sync(lambda: httpx.get(f"{stack.url}/v1/quota", headers=headers).status_code == 200,
                  what=f"key {name} to be loaded")
    return headers


def test_a_job_streams_from_accepted_to_completed(stack: Stack):
    with stack.client() as client:
        job_id = submit(client, steps=16)
    events = follow(stack, f"/v1/jobs/{job_id}/events")
    types = [e["event"] for e in events]
    assert types[0] == "job.accepted" and types[-1] == "job.completed", types
    for kind in ("job.enriched", "job.started", "job.progressed", "image.generated"):
        assert kind in types, types
    assert all(e["id"] == e["data"]["event_id"] and e["data"]["job_id"] == job_id for e in events)
    progress = next(e["data"] for e in events if e["event"] == "job.progressed")
    assert progress["total_steps"] == 16 and 1 <= progress["step"] <= 16
    generated = next(e["data"] for e in events if e["event"] == "image.generated")
    assert "png" not in generated and generated["image_url"] == f"/v1/images/{job_id}_1"
    assert events[-1]["data"]["image_urls"] == [f"/v1/images/{job_id}_1"]
    assert len({e["id"] for e in events}) == len(events)
    # A stream opened after the end replays the whole job and closes.
    assert [e["id"] for e in follow(stack, f"/v1/jobs/{job_id}/events")] == [e["id"] for e in events]


def test_a_reconnect_with_last_event_id_loses_and_repeats_nothing(stack: Stack):
    with stack.client() as client:
        job_id = submit(client, steps=40, size=128)
    whole: list[dict] = []
    reader = threading.Thread(target=lambda: whole.extend(follow(stack, f"/v1/jobs/{job_id}/events")))
    reader.start()
    first = follow(stack, f"/v1/jobs/{job_id}/events", stop=lambda e: e["event"] == "job.progressed")
    assert first[-1]["event"] == "job.progressed" and first[-1]["data"]["step"] < 40
    rest = follow(stack, f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": first[-1]["id"]})
    reader.join(60)
    ids = [e["id"] for e in first + rest]
    assert len(ids) == len(set(ids)), "an event was sent twice"
    assert ids == [e["id"] for e in whole], "the resumed stream differs from an uninterrupted one"
    assert rest[-1]["event"] == "job.completed" and rest[0]["event"] != "job.accepted"
    wait_for_sync(lambda: set(ids) <= set(log_ids(stack, job_id)), what="the recorder to log every streamed event")
    logged_until_end = log_ids(stack, job_id)
    assert set(logged_until_end[:logged_until_end.index(rest[-1]["id"]) + 1]) <= set(ids), "an event was lost"


def test_tenants_see_only_their_own_events_on_sse_and_websocket(stack: Stack):
    alice, bob = tenant(stack, "alice"), tenant(stack, "bob")
    bob_sse: list[dict] = []
    stop_bob = threading.Event()

    def bob_follows() -> None:
        with httpx.stream("GET", f"{stack.url}/v1/events", headers=bob, timeout=30) as answer:
            for event in sse(answer):
                if stop_bob.is_set():
                    return
                bob_sse.append(event)

    bob_thread = threading.Thread(target=bob_follows, daemon=True)
    bob_thread.start()
    with ws_connect(f"{stack.url.replace('http', 'ws')}/v1/ws") as bob_ws:
        bob_ws.send(json.dumps({"action": "auth", "key": bob["Authorization"].split()[1]}))
        assert json.loads(bob_ws.recv(5))["action"] == "ready"
        bob_ws.send(json.dumps({"action": "subscribe", "type": "job.*"}))
        assert json.loads(bob_ws.recv(5))["action"] == "subscribed"
        wait_for_sync(lambda: any("comment" in e for e in bob_sse), what="bob's stream to be open")
        with httpx.Client(base_url=stack.url, headers=alice, timeout=10) as client:
            alice_events = []
            job_id = None

            def alice_follows() -> None:
                alice_events.extend(follow(stack, "/v1/events?type=job.*", headers=alice,
                                           stop=lambda e: e["event"] == "job.completed"))

            alice_thread = threading.Thread(target=alice_follows, daemon=True)
            alice_thread.start()
            time.sleep(0.5)  # let alice's stream subscribe before the job exists
            job_id = submit(client)
            alice_thread.join(60)
            assert {e["data"]["job_id"] for e in alice_events} == {job_id}
            assert alice_events[0]["event"] == "job.accepted"
            # Bob may not follow alice's job by id either: it does not exist for him.
            assert httpx.get(f"{stack.url}/v1/jobs/{job_id}/events", headers=bob).status_code == 404
            bob_ws.send(json.dumps({"action": "subscribe", "job": job_id}))
            assert json.loads(bob_ws.recv(5)) == {"status": "error", "message": f"job {job_id!r} not found"}
            with pytest.raises(TimeoutError):
                print("bob got", bob_ws.recv(1))
    stop_bob.set()
    assert [e for e in bob_sse if "comment" not in e] == [], "bob saw alice's events"
    assert any(e.get("comment") == "keep-alive" for e in bob_sse)


def test_websocket_subscribe_and_unsubscribe(stack: Stack):
    with ws_connect(f"{stack.url.replace('http', 'ws')}/v1/ws", additional_headers=stack.auth) as ws:
        assert json.loads(ws.recv(5))["action"] == "ready"
        with stack.client() as client:
            job_id = submit(client)
            ws.send(json.dumps({"action": "subscribe", "job": job_id}))
            seen = []
            while not seen or seen[-1] not in TERMINAL:
                message = json.loads(ws.recv(30))
                seen.append(message.get("type") or message.get("action"))
            assert seen[0] == "subscribed" and seen[-1] == "job.completed", seen
            ws.send(json.dumps({"action": "subscribe", "type": "job.completed"}))
            assert json.loads(ws.recv(5)) == {"action": "subscribed", "job": None, "type": "job.completed"}
            second = submit(client)
            completed = json.loads(ws.recv(30))
            assert (completed["type"], completed["job_id"]) == ("job.completed", second)
            ws.send(json.dumps({"action": "unsubscribe", "type": "job.completed"}))
            assert json.loads(ws.recv(5))["action"] == "unsubscribed"
            third = submit(client)
            wait_for_sync(lambda: client.get(f"/v1/jobs/{third}").json()["status"] == "completed", timeout=60,
                          what="the third job")
            with pytest.raises(TimeoutError):
                ws.recv(1)
            ws.send(json.dumps({"action": "subscribe", "type": "job..x"}))
            assert "not a routing key" in json.loads(ws.recv(5))["message"]


def test_a_websocket_without_credentials_is_closed(stack: Stack):
    with ws_connect(f"{stack.url.replace('http', 'ws')}/v1/ws") as ws:
        ws.send(json.dumps({"action": "subscribe", "type": "#"}))
        assert "auth" in json.loads(ws.recv(5))["message"]
        with pytest.raises(Exception, match="1008"):
            ws.recv(5)


# -- webhooks ---------------------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on loopback that fails its first `failures` requests with 500."""

    def __init__(self, failures: int = 0):
        self.requests: list[tuple[dict, bytes]] = []
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(500 if len(receiver.requests) <= receiver.failures else 204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def admin_secret(stack: Stack) -> str:
    key_id, _ = split_token(stack.token)
    return keys.show(stack.data_dir / "state", key_id).webhook_secret


def test_a_webhook_is_signed_and_retried_after_two_failures(stack: Stack):
    receiver = Receiver(failures=2)
    try:
        with stack.client() as client:
            job_id = submit(client, webhook={"url": receiver.url, "events": ["job.completed"]})
            doc = wait_for_sync(lambda: (d := client.get(f"/v1/jobs/{job_id}").json()).get("webhook", {}).get(
                "status") and d, timeout=60, what="the webhook's outcome in the job document")
        assert len(receiver.requests) == 3
        ids = {headers["webhook-id"] for headers, _ in receiver.requests}
        assert len(ids) == 1, "every try carries the same webhook-id"
        headers, body = receiver.requests[-1]
        payload = standardwebhooks.Webhook(admin_secret(stack)).verify(body, headers)
        assert payload["id"] == job_id and payload["status"] == "completed" and len(payload["images"]) == 1
        assert doc["webhook"]["status"] == "delivered" and doc["webhook"]["tries"] == 3
        assert doc["webhook"]["last_event"] == "job.completed" and doc["webhook"]["status_code"] == 204
    finally:
        receiver.close()


def test_a_webhook_that_never_answers_is_dead_lettered(stack: Stack):
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: [held.append(silent.accept()[0]) for _ in range(10)], daemon=True).start()
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
    try:
        with stack.client() as client:
            job_id = submit(client, webhook={"url": url})
            doc = wait_for_sync(lambda: (d := client.get(f"/v1/jobs/{job_id}").json()).get("webhook", {}).get(
                "status") and d, timeout=60, what="the webhook's outcome")
        assert doc["webhook"]["status"] == "failed" and doc["webhook"]["tries"] == 3
        assert "no answer within 3 s" in doc["webhook"]["error"]
        assert len(held) == 3
        broker = (stack.data_dir / "rabbitmq" / "url").read_text().strip()
        parked = asyncio.run(deadletters.list_parked(broker, Topology("darkroom")))
        mine = [p for p in parked if p.kind == "deliver_webhook" and p.job_id == job_id]
        assert len(mine) == 1 and "undeliverable after 3 tries" in mine[0].reason
    finally:
        silent.close()
        for connection in held:
            connection.close()


@pytest.mark.parametrize("url", ["http://10.0.0.7/hook", "http://169.254.169.254/latest", "http://[::1]/x",
                                 "http://192.168.1.1:8080/", "file:///etc/passwd"])
def test_a_webhook_to_a_private_address_is_refused_at_submit(stack: Stack, url: str):
    with stack.client() as client:
        answer = client.post("/v1/jobs", json={"prompt": "a fox", "webhook": {"url": url}})
    assert answer.status_code == 400
    assert answer.json()["message"].startswith("webhook.url"), answer.text


def test_webhook_events_must_be_routing_keys_it_can_report(stack: Stack):
    with stack.client() as client:
        answer = client.post("/v1/jobs", json={"prompt": "a fox", "webhook": {"url": "http://127.0.0.1:9/x",
                                                                              "events": ["model.loaded"]}})
    assert answer.status_code == 400 and "webhook.events[0]" in answer.json()["message"]


# -- the contract -----------------------------------------------------------------------------------


def test_asyncapi_is_served_and_events_tail_prints_events(stack: Stack):
    document = httpx.get(f"{stack.url}/asyncapi.json").json()
    assert document["asyncapi"] == "3.0.0" and "job.completed" in document["channels"]
    env = {**os.environ, "DARKROOM_DATA_DIR": str(stack.data_dir)}
    env.pop("DARKROOM_AMQP_URL", None)
    tail = subprocess.Popen([*darkroom_command(), "events", "tail", "--type", "job.*", "--json", "--count", "2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_sync(lambda: tail.stderr.readline().startswith("following"), timeout=30, what="tail to subscribe")
        with stack.client() as client:
            job_id = submit(client)
        out, _ = tail.communicate(timeout=60)
    finally:
        if tail.poll() is None:
            tail.kill()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(e["type"], e["job_id"]) for e in lines] == [("job.accepted", job_id), ("job.enriched", job_id)]
