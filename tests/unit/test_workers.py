"""Remote workers without I/O: the ingress's live set of workers, a worker's presence (busy
share, jobs done), and the least-privilege broker permissions of a worker credential."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from ops.workers import NAME, permissions
from schemas.events import WorkerPresence
from schemas.settings import Settings
from services.generator.presence import Presence, TalliedRender, Tally
from services.generator.render import Rendered
from services.ingress.workers import WorkerBoard
from services.runtime import broker_url


def presence(worker: str, *, interval: float = 10.0, leaving: bool = False) -> WorkerPresence:
    return WorkerPresence(worker=worker, host="gpu-1", device="cuda", dtype="float16", models=("sdxl",), max_batch=4,
                          busy=0.5, jobs_done=3, started_at=datetime(2026, 11, 30, tzinfo=UTC), interval=interval,
                          leaving=leaving)


async def test_a_worker_is_up_then_gone_after_three_silent_intervals_then_dropped():
    now = [100.0]
    board = WorkerBoard(clock=lambda: now[0])
    await board.observe(presence("w1"))
    [listed] = board.listing().workers
    assert (listed.id, listed.host, listed.device, listed.models, listed.status) == ("w1", "gpu-1", "cuda", ["sdxl"], "up")
    now[0] += 29.0
    assert board.listing().workers[0].status == "up"
    now[0] += 2.0  # 31 s: more than 3 intervals of 10 s
    assert board.listing().workers[0].status == "gone"
    now[0] += 70.0  # past 10 intervals
    assert board.listing().workers == []


async def test_a_worker_heard_again_is_up_and_one_leaving_goes_at_once():
    now = [0.0]
    board = WorkerBoard(clock=lambda: now[0])
    await board.observe(presence("w1"))
    await board.observe(presence("w2"))
    now[0] = 35.0
    await board.observe(presence("w1"))
    assert [(w.id, w.status) for w in board.listing().workers] == [("w1", "up"), ("w2", "gone")]
    await board.observe(presence("w1", leaving=True))
    assert [w.id for w in board.listing().workers] == ["w2"]


def test_presence_reports_the_busy_share_of_each_interval_and_jobs_done():
    tally = Tally()
    report = Presence(worker_id="w", tally=tally, describe=lambda: ("cpu", "float32", ["tiny-sd"]), max_batch=4,
                      interval=10.0, host="h")
    first = report.event(now=0.0)
    assert (first.busy, first.jobs_done, first.models, first.device) == (0.0, 0, ("tiny-sd",), "cpu")
    tally.busy_seconds = 2.5
    tally.jobs_done = 2
    assert report.event(now=10.0).busy == 0.25
    tally.running_since = 15.0  # a call under way counts up to now
    later = report.event(now=20.0)
    assert later.busy == 0.5 and later.jobs_done == 2
    assert report.event(now=20.0, leaving=True).leaving


def test_the_tallied_render_counts_jobs_not_dropped_and_time_spent():
    class Command:
        pass

    tallied = TalliedRender(lambda model, commands, watch: Rendered(calls=[], dropped={"dropped-job"}))
    tallied(None, [Command(), Command()], None)
    assert tallied.tally.jobs_done == 1 and tallied.tally.busy_seconds > 0 and tallied.tally.running_since is None


def test_worker_broker_permissions_cover_the_namespace_only():
    configure, write, read = permissions("dr.prod")
    for pattern in (configure, write, read):
        assert re.match(pattern, "dr.prod.generator") and re.match(pattern, "dr.prod.events")
        assert not re.match(pattern, "drXprod.generator"), "the dot is literal"
        assert not re.match(pattern, "other.generator") and not re.match(pattern, "amq.default")


def test_worker_names_are_plain():
    assert NAME.match("gpu-box-1") and not NAME.match("GPU") and not NAME.match("-x") and not NAME.match("a/b")


def test_amqps_urls_carry_the_tls_files_and_plain_ones_are_left_alone():
    tls = Settings(amqp_url="amqps://w:pw@control.lan:5671/,amqp://guest:guest@127.0.0.1:5672/",
                   broker_ca="/etc/darkroom/ca.pem", broker_cert="/etc/darkroom/w.pem", broker_key="/etc/darkroom/w.key")
    secure, plain = broker_url(tls).split(",")
    assert secure == ("amqps://w:pw@control.lan:5671/?cafile=%2Fetc%2Fdarkroom%2Fca.pem"
                      "&certfile=%2Fetc%2Fdarkroom%2Fw.pem&keyfile=%2Fetc%2Fdarkroom%2Fw.key")
    assert plain == "amqp://guest:guest@127.0.0.1:5672/"
    assert broker_url(Settings()) == "amqp://guest:guest@127.0.0.1:5672/"
    given = Settings(amqp_url="amqps://h/?cafile=/mine.pem", broker_ca="/etc/darkroom/ca.pem")
    assert broker_url(given) == "amqps://h/?cafile=%2Fmine.pem", "a CA in the URL wins"
