"""`darkroom bench --quick` keeps the harness working: every case runs and reports real figures."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ops.bench.runner import DEFAULT_CASES
from tests.e2e.conftest import darkroom_command


def test_quick_bench_reports_every_case_with_its_baseline(amqp_url: str, tmp_path: Path):
    env = {**os.environ, "DARKROOM_BENCH_AMQP_URL": amqp_url}
    run = subprocess.run(
        [*darkroom_command(), "bench", "--quick", "--results", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=480,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    [result] = tmp_path.glob("*-quick.json")
    report = json.loads(result.read_text())
    assert report["failures"] == {}, report["failures"]
    cases = {m["case"] for m in report["measurements"]}
    import ops.bench.cases  # noqa: F401

    assert cases == set(DEFAULT_CASES)
    for m in report["measurements"]:
        assert m["darkroom"] > 0, m
        if m["baseline"] is not None:
            assert m["baseline"] > 0 and m["ratio"] == round(m["darkroom"] / m["baseline"], 4), m
    overhead = {m["metric"]: m for m in report["measurements"] if m["case"] == "overhead"}
    assert overhead["total time, 6 sequential jobs"]["baseline"] > 0
    assert "case" in run.stdout and "ratio" in run.stdout, "the table is printed"


def test_capacity_case_offers_rising_rates_and_profiles_the_busiest_stage(amqp_url: str, tmp_path: Path):
    """`darkroom bench capacity --quick`: the no-op stack takes every job of each step it ran, and
    the report names a control-plane stage and that stage's top frames under load."""
    env = {**os.environ, "DARKROOM_BENCH_AMQP_URL": amqp_url}
    run = subprocess.run(
        [*darkroom_command(), "bench", "capacity", "--quick", "--results", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(next(tmp_path.glob("*-quick.json")).read_text())
    assert report["failures"] == {}, report["failures"]
    [summary] = [m for m in report["measurements"] if m["metric"].startswith("sustained")]
    details = summary["details"]
    steps = details["steps"]
    assert [step["offered"] for step in steps] == [10, 40][:len(steps)]
    first = steps[0]
    assert first["accepted"] == first["completed"] == first["jobs"] == 20, first
    assert 0 < first["submit_p50_ms"] <= first["submit_p99_ms"] and 0 < first["latency_p50_ms"] <= first["latency_p99_ms"]
    assert set(first["queue_depths"]) == {"enricher", "generator", "saver", "recorder", "reaper"}
    assert first["cpu"]["ingress"] > 0 and first["cpu"]["recorder"] > 0, first["cpu"]
    # The sustained rate is one of the offered rates that kept up (or 0 if none did).
    assert summary["darkroom"] in [step["offered"] for step in steps if step["kept_up"]] + [0]
    assert details["saturating_stage"] in ("ingress", "enricher", "saver", "recorder", "reaper", "rabbitmq")
    assert details["limit"].startswith((details["saturating_stage"], "the machine", "no core full")), details["limit"]
    profile = details["profile"]
    assert profile["samples"] > 0 and profile["top_own_time"], profile
    assert profile["during"]["offered"] == details["saturating_at"]
    assert profile["stage"] in ("ingress", "enricher", "saver", "recorder", "reaper")
    assert any(frame["frame"].split(" (")[-1].startswith("services/") for frame in profile["top_darkroom_inclusive"]), (
        "the profiled stage's own code is on its stack")
    assert "capacity" in run.stdout
