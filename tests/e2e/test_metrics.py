"""GET /metrics on the running stack: after a few jobs, every stage's histogram moved, jobs are
counted by model, HTTP requests by route and code, and the broker's queues are seen."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Stack
from tests.support import wait_for_sync


def scrape(client: httpx.Client) -> dict[tuple[str, tuple], float]:
    answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def stage(found: dict, name: str) -> float:
    return found.get(("darkroom_stage_seconds_count", (("stage", name),)), 0.0)


def test_histograms_move_after_a_few_jobs(stack: Stack):
    with stack.client() as client:
        before = scrape(client)
        ids = [client.post("/v1/jobs", json={"prompt": f"a metered fox {n}", "settings": {
            "width": 64, "height": 64, "num_inference_steps": 6, "seed": n}}).json()["id"] for n in range(3)]
        for job_id in ids:
            wait_for_sync(lambda job_id=job_id: client.get(f"/v1/jobs/{job_id}").json()["status"] == "completed",
                          timeout=120, interval=0.2, what=f"job {job_id} to complete")
        # The projection and the live fold see the last events a moment after the job document.
        after = wait_for_sync(lambda: (found := scrape(client)) and stage(found, "total") >= stage(before, "total") + 3
                              and found[("darkroom_jobs", (("status", "completed"),))] >= 3 and found,
                              timeout=30, interval=0.2, what="job.completed folded into the metrics and the projection")
        assert client.get("/metrics", headers={"Authorization": ""}).status_code == 401

    for name in ("queue_wait", "enrich", "step", "decode_encode", "save", "total"):
        assert stage(after, name) >= stage(before, name) + 3, name
    moved = after[("darkroom_stage_seconds_sum", (("stage", "total"),))] - \
        before.get(("darkroom_stage_seconds_sum", (("stage", "total"),)), 0.0)
    assert moved > 0
    completed = ("darkroom_jobs_by_model_total", (("model", "tiny-sd"), ("status", "completed")))
    assert after[completed] >= before.get(completed, 0) + 3
    posted = ("darkroom_http_requests_total", (("code", "202"), ("method", "POST"), ("route", "/v1/jobs")))
    assert after[posted] >= before.get(posted, 0) + 3
    assert after[("darkroom_http_request_seconds_count", (("method", "POST"), ("route", "/v1/jobs")))] >= 3
    assert after[("darkroom_queue_consumers", (("stage", "generator"),))] >= 1
    assert after[("darkroom_queue_consumers", (("stage", "generator.tiny-sd"),))] >= 1, "its warm model's queue"
    assert ("darkroom_dead_letters", ()) in after
    assert ("darkroom_projection_lag_seconds", ()) in after
    assert after[("darkroom_generator_batch_jobs_count", ())] >= before.get(("darkroom_generator_batch_jobs_count", ()), 0) + 1
    assert sum(v for (name, _), v in after.items() if name == "darkroom_generator_busy_seconds_total") > 0
    assert sum(v for (name, _), v in after.items() if name == "darkroom_model_cache_total") >= 3
