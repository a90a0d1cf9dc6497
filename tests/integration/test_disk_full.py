"""A full disk (attack report F12), on a real small filesystem (a tmpfs the test mounts): the saver
waits it out instead of failing the job, keeps the job alive for the reaper, and saves the images
once space is back; /health probes by writing, so it sees a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from schemas.events import ImageSaved, JobCompleted, JobFailed, WorkerHeartbeat
from services.ingress.app import create_app
from services.saver.main import main as saver_main
from tests.integration.test_stages import JOB, generated
from tests.support import running


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: real ENOSPC, as a full disk gives it."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"this test mounts a tmpfs (root needed): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Take every free byte of the filesystem `folder` is on."""
    filler = folder / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    with contextlib.suppress(OSError), filler.open("ab") as out:  # the last partial block
        out.write(b"\0" * 4096)
    return filler


async def test_f12_a_full_disk_delays_saving_and_never_fails_the_job(settings, small_disk, bus, tap):
    data = small_disk / "var"
    data.mkdir()
    full = msgspec.structs.replace(settings, data_dir=str(data))
    async with running(saver_main, full, "saver", bus):
        filler = fill(small_disk)
        await bus.publish(generated(1, total=1))
        beats = await tap.wait(WorkerHeartbeat, JOB, timeout=20)
        assert beats[0].worker == "saver", "the job is reported alive while its save waits"
        assert not tap.of(JobFailed, JOB) and not tap.of(ImageSaved, JOB)
        os.unlink(filler)
        [completed] = await tap.wait(JobCompleted, JOB, timeout=60)
    assert completed.image_ids == [f"{JOB}_1"]
    assert not tap.of(JobFailed, JOB)
    assert (data / "images" / completed.images[0].file_path).stat().st_size > 0


async def test_f12_health_probes_by_writing_and_sees_a_full_disk(settings, small_disk, bus):
    data = small_disk / "var"
    data.mkdir()
    full = msgspec.structs.replace(settings, data_dir=str(data))
    async with AsyncTestClient(app=create_app(full)) as client:
        async def healthy() -> bool:
            return (await client.get("/health")).status_code == 200

        for _ in range(200):  # until the ingress is connected to the broker
            if await healthy():
                break
            await asyncio.sleep(0.05)
        assert (await client.get("/health")).json()["data_dir"] == "writable"
        filler = fill(small_disk)
        try:
            answer = await client.get("/health")
            assert answer.status_code == 503, answer.text
            assert answer.json()["status"] == "unavailable"
        finally:
            os.unlink(filler)
        assert (await client.get("/health")).json()["status"] != "unavailable"
