"""`darkroom run` as an operator relies on it: it brings a dead broker back, stops on any number
of signals, and never kills a process that a stale pid file names (attack report F5, F6, F7)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ops.broker import PrivateBroker, free_port
from tests.e2e.conftest import Stack, created_token, darkroom_command
from tests.support import wait_for_sync


def _start(root: Path, services: str | None = None) -> Stack:
    data_dir = root / "var"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env |= {
        "DARKROOM_DATA_DIR": str(data_dir),
        "DARKROOM_PORT": str(port),
        "DARKROOM_LOG_FORMAT": "json",
        "DARKROOM_CONFIG_PATH": str(root / "darkroom.toml"),
    }
    if services:
        env["DARKROOM_SERVICES"] = services
    key = created_token(subprocess.run([*darkroom_command(), "keys", "create", "--name", "ops", "--admin"], env=env,
                         capture_output=True, text=True, check=True).stdout)
    log = root / "stack.log"
    with log.open("wb") as out:
        process = subprocess.Popen([*darkroom_command(), "run"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return Stack(url=f"http://127.0.0.1:{port}", data_dir=data_dir, process=process, log=log, token=key)


def _healthy(stack: Stack, status: str = "ok") -> bool:
    assert stack.process.poll() is None, f"darkroom run exited:\n{stack.log.read_text()[-3000:]}"
    try:
        return httpx.get(f"{stack.url}/health", timeout=1, headers=stack.auth).json().get("status") == status
    except (httpx.HTTPError, ValueError):
        return False


def _stop(stack: Stack) -> None:
    if stack.process.poll() is None:
        stack.process.send_signal(signal.SIGTERM)
        try:
            stack.process.wait(60)
        except subprocess.TimeoutExpired:
            stack.process.kill()
            stack.process.wait()


@pytest.fixture(scope="module")
def full_stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Stack]:
    stack = _start(tmp_path_factory.mktemp("supervised"))
    try:
        wait_for_sync(lambda: _healthy(stack), timeout=180, interval=0.25, what="the stack to report healthy")
        yield stack
    finally:
        _stop(stack)


def _beam_pid(data_dir: Path) -> int:
    return int((data_dir / "rabbitmq" / "pids").read_text().split()[0])


def test_f5_a_killed_broker_is_restarted_and_every_route_works_again(full_stack: Stack) -> None:
    stack = full_stack
    beam = _beam_pid(stack.data_dir)
    os.killpg(beam, signal.SIGKILL)
    wait_for_sync(lambda: _beam_pid(stack.data_dir) != beam, timeout=30, what="the supervisor to relaunch the broker")
    wait_for_sync(lambda: _healthy(stack), timeout=120, interval=0.5, what="the stack to be healthy again")
    with stack.client() as client:
        # The request-reply route needs its reply consumer back, not only the connection.
        def swept() -> bool:
            return client.post("/v1/queue/reset-stalled", json={}).status_code == 200

        wait_for_sync(swept, timeout=30, interval=0.5, what="reset-stalled to answer 200 after the restart")
        answer = client.post("/v1/jobs", json={"prompt": "after the restart",
                                               "settings": {"width": 64, "height": 64, "num_inference_steps": 2}})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        done = wait_for_sync(lambda: (doc := client.get(f"/v1/jobs/{job_id}").json())["status"] in
                             ("completed", "failed", "cancelled") and doc, timeout=90, interval=0.2,
                             what="the job submitted after the broker restart to end")
        assert done["status"] == "completed", done
    assert '"broker exited; restarting it"' in stack.log.read_text()


def test_f6_repeated_stop_signals_never_hang_the_supervisor(tmp_path: Path) -> None:
    stack = _start(tmp_path, services="ingress")
    try:
        wait_for_sync(lambda: stack.log.exists() and '"Darkroom is ready"' in stack.log.read_text(), timeout=120,
                      interval=0.25, what="the ingress-only stack to be ready")
        # The process group gets one SIGTERM and `just` forwards another: send a burst of them.
        for _ in range(20):
            os.killpg(stack.process.pid, signal.SIGTERM)
        stack.process.wait(60)
    finally:
        if stack.process.poll() is None:
            os.killpg(stack.process.pid, signal.SIGKILL)
            pytest.fail("darkroom run did not exit within 60 s of repeated SIGTERMs")
    assert stack.process.returncode == 0
    log = stack.log.read_text()
    assert '"stopping"' in log and '"stopped"' in log


def test_f7_a_stale_pid_file_never_kills_a_stranger(tmp_path: Path) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        base = tmp_path / "rabbitmq"
        base.mkdir()
        (base / "pids").write_text(f"{stranger.pid} {stranger.pid}\n")
        broker = PrivateBroker(base, name="darkroom-stale")
        broker.start()
        try:
            assert stranger.poll() is None, "the process named by a stale pid file was killed"
            assert broker.owns(broker.server.pid)
            assert not broker.owns(stranger.pid)
        finally:
            broker.stop()
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
