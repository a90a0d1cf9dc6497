"""TLS to the broker: the private broker with a TLS listener (certificates made by `trustme`), a
worker started with the command `darkroom workers add` prints (amqps, its own user, --broker-ca)
completes a job; started with a CA that did not sign the broker's certificate, it stops at once
and says that TLS failed."""

from __future__ import annotations

import asyncio
import io
import secrets
import shlex
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme
from PIL import Image

from ops.broker import BrokerTls, PrivateBroker, rabbitmqctl
from ops.netns import clean_env, darkroom_command
from ops.workers import add
from schemas.events import GenerateImages, ImageGenerated
from schemas.jobs import GenerationSettings, JobSpec
from schemas.settings import Settings
from services import runtime
from tests.support import EventTap, wait_for

pytestmark = pytest.mark.timeout(180)


def write_ca(ca: trustme.CA, path: Path) -> Path:
    ca.cert_pem.write_to_path(str(path))
    return path


async def test_a_worker_over_amqps_completes_a_job_and_a_wrong_ca_stops_it_naming_tls(tmp_path):
    ca, stranger = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(str(tmp_path / "broker.key"))
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "broker.pem"))
    home = tmp_path / "worker-host"
    home.mkdir()
    write_ca(ca, home / "ca.pem")
    write_ca(stranger, home / "stranger.pem")
    broker = PrivateBroker(tmp_path / "rabbitmq", name="darkroom-tls",
                           tls=BrokerTls(tmp_path / "broker.pem", tmp_path / "broker.key")).start()
    processes: list[subprocess.Popen] = []
    try:
        data = tmp_path / "control"
        settings = Settings(data_dir=str(data), namespace=f"t{secrets.token_hex(4)}", broker_ca=str(home / "ca.pem"),
                            amqp_url=f"amqps://guest:guest@127.0.0.1:{broker.tls_port}/")
        _, command = add(settings, "tls", rabbitmq_dir=str(broker.base), ingress_url="http://127.0.0.1:9",
                         broker_host="127.0.0.1")
        assert command.startswith("darkroom worker --broker amqps://darkroom-worker-tls:"), command
        assert f"@127.0.0.1:{broker.tls_port}/ " in command and command.endswith(
            f"--namespace {settings.namespace}") and " --broker-ca ca.pem " in command, command
        args = shlex.split(command)[1:]

        def start(words: list[str], log: str) -> subprocess.Popen:
            with (tmp_path / log).open("wb") as out:
                process = subprocess.Popen([*darkroom_command(), *words], cwd=home, stdout=out,
                                           stderr=subprocess.STDOUT,
                                           env=clean_env(DARKROOM_TORCH_THREADS="1", DARKROOM_MAX_BATCH="1",
                                                         DARKROOM_WARMUP="off"))
            processes.append(process)
            return process

        # This process too connects over amqps, through the services' own path (runtime.connected).
        async with runtime.connected(settings, "test") as bus:
            tap = await EventTap(bus).start()
            worker = start(args, "worker.log")

            async def consuming() -> bool:
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                return await bus.consumer_count("generator") > 0

            deadline = asyncio.get_running_loop().time() + 90
            while not await consuming():
                assert asyncio.get_running_loop().time() < deadline, "the worker did not start consuming"
                await asyncio.sleep(0.2)
            connections = rabbitmqctl(broker.base, "list_connections", "user", "ssl")
            assert "darkroom-worker-tls\ttrue" in connections, connections
            await bus.send(GenerateImages(job_id="over-tls", created_at=datetime.now(UTC), spec=JobSpec(
                prompt="a fox", model="tiny-sd", settings=GenerationSettings(
                    num_images=1, num_inference_steps=2, guidance_scale=7.5, width=64, height=64, seed=1))))
            [image] = await tap.wait(ImageGenerated, "over-tls", timeout=60)
            with Image.open(io.BytesIO(image.png)) as decoded:
                assert decoded.size == (64, 64)

            # The same command with a CA that did not sign the broker's certificate.
            ca_at = args.index("--broker-ca") + 1
            refused = start([*args[:ca_at], "stranger.pem", *args[ca_at + 1:]], "wrong.log")
            await wait_for(lambda: refused.poll() is not None, timeout=60, interval=0.2,
                           what="the worker with a wrong CA to stop")
            said = (tmp_path / "wrong.log").read_text()
            assert refused.returncode == 1, said[-2000:]
            assert "TLS to the broker at 127.0.0.1:" in said and "CERTIFICATE_VERIFY_FAILED" in said, said[-2000:]
            assert "stranger.pem" in said, "it names the CA it checked against"
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(30)
        broker.stop()
