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
