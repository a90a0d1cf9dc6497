"""Model-affinity routing: the names of the model queues, the rule a worker picks a queue by, and
which queues it consumes as its warm models come and go (plain fakes, no broker)."""

from __future__ import annotations

import random
import re
from types import SimpleNamespace

import pytest

from schemas import topology
from schemas.settings import Settings, SettingsError
from schemas.topology import Topology
from services.generator.affinity import Affinity, ModelQueue, choose

TOPO = Topology("darkroom")


def test_a_model_queue_is_named_for_its_model_and_bound_by_its_own_key():
    assert TOPO.model_queue("sdxl-base_1.0") == "darkroom.generator.sdxl-base_1.0"
    assert topology.generate_images_key("sdxl-base_1.0") == "generate_images.sdxl-base_1.0"
    assert TOPO.stage(TOPO.model_queue("sdxl")) == "generator", "its dead letters are the generator's"


def test_model_queue_arguments_are_the_generator_queues_but_name_their_own_dead_letters():
    arguments = TOPO.model_queue_arguments("sdxl")
    assert arguments == {**TOPO.queue_arguments("generator"), "x-dead-letter-routing-key": "darkroom.generator.sdxl"}
    assert arguments["x-delivery-limit"] == topology.GENERATOR_DELIVERY_LIMIT
    assert arguments["x-overflow"] == "reject-publish"


def test_odd_model_ids_are_encoded_into_valid_distinct_names():
    amqp_name = re.compile(r"^[A-Za-z0-9_.:-]+$")  # what AMQP 0-9-1 allows in a queue name
    odd = ["my model/v2", "ünïcode", "a#b", "a:23b", "a*b", "a%23b"]
    names = [topology.model_name(model) for model in odd]
    assert topology.model_name("my model/v2") == "my:20model:2Fv2"
    assert len(set(names)) == len(odd)
    assert all(amqp_name.match(TOPO.model_queue(model)) for model in odd)
    long_ids = ["x" * 300, "x" * 299 + "y"]
    long_names = [TOPO.model_queue(model) for model in long_ids]
    assert long_names[0] != long_names[1]
    assert all(len(name.encode()) <= 255 and amqp_name.match(name) for name in long_names)
    with pytest.raises(ValueError, match="model id"):
        topology.model_name("")


def queues(*specs: tuple[str, int, int]) -> list[ModelQueue]:
    return [ModelQueue(model, waiting, consumers) for model, waiting, consumers in specs]


def test_an_idle_worker_takes_the_queue_with_the_most_jobs_waiting_per_consumer():
    rng = random.Random(1)
    seen = queues(("a", 10, 1), ("b", 6, 0), ("c", 0, 0))
    assert choose(seen, idle=True, unserved_since={}, now=0, patience=10, rng=rng) == "b"  # 6/1 > 10/2
    assert choose(queues(("a", 0, 0)), idle=True, unserved_since={}, now=0, patience=10, rng=rng) is None


def test_an_idle_worker_joins_a_served_queue_only_for_a_full_batch():
    served = queues(("a", 7, 1))  # 7 / 2 = 3.5 jobs each, counting the joiner
    assert choose(served, idle=True, unserved_since={}, now=0, patience=10, rng=random.Random(), batch=4) is None
    assert choose(served, idle=True, unserved_since={}, now=0, patience=10, rng=random.Random(), batch=3) == "a"
    assert choose(queues(("b", 1, 0)), idle=True, unserved_since={}, now=0, patience=10, rng=random.Random(),
                  batch=8) == "b", "an unserved queue is taken for a single job"


def test_ties_are_broken_at_random():
    picks = {choose(queues(("a", 5, 0), ("b", 5, 0), ("c", 5, 0)), idle=True, unserved_since={}, now=0,
                    patience=10, rng=random.Random(seed)) for seed in range(40)}
    assert picks == {"a", "b", "c"}


def test_a_busy_worker_takes_only_a_queue_unserved_for_longer_than_the_patience():
    seen = queues(("a", 10, 0), ("b", 3, 0), ("c", 50, 2))
    since = {"a": 95.0, "b": 88.0}
    assert choose(seen, idle=False, unserved_since=since, now=100, patience=15, rng=random.Random()) is None
    assert choose(seen, idle=False, unserved_since=since, now=100, patience=10, rng=random.Random()) == "b"
    assert choose(seen, idle=False, unserved_since=since, now=106, patience=5, rng=random.Random()) == "b", \
        "the longest-waiting first"
    assert choose(queues(("c", 50, 2)), idle=False, unserved_since={}, now=1000, patience=0,
                  rng=random.Random()) is None, "a queue with consumers is not starving"


class FakeCache:
    def __init__(self, warm: list[str], fits: int = 1):
        self.models = warm
        self.fits = fits

    def warm(self):
        return [SimpleNamespace(entry=SimpleNamespace(id=model)) for model in self.models]

    def would_evict(self, entry) -> list[str]:
        return self.models[: max(0, len(self.models) + 1 - self.fits)]


class FakeBus:
    def __init__(self):
        self.topology = TOPO
        self.depths: dict[str, tuple[int, int]] = {}
        self.stopped: list[str] = []

    async def queue_depths(self, names):
        return {name: self.depths[name] for name in names if name in self.depths}

    async def stop_consuming(self, queue) -> None:
        self.stopped.append(queue)


def affinity(warm: list[str], catalog: list[str], *, empty: bool = True,
             look_around: bool = True) -> tuple[Affinity, FakeBus, FakeCache]:
    bus, cache = FakeBus(), FakeCache(warm)
    worker = SimpleNamespace(cache=cache, batcher=SimpleNamespace(empty=empty), options=SimpleNamespace(max_batch=4),
                             catalog=SimpleNamespace(models={m: None for m in catalog}, model=lambda m: SimpleNamespace(id=m)))

    async def consume(model: str) -> str:
        return f"queue-of-{model}"

    return Affinity(bus=bus, worker=worker, consume=consume, patience=10, rng=random.Random(3),
                    look_around=look_around), bus, cache


async def test_a_worker_consumes_its_warm_models_queues_and_stops_when_one_is_evicted():
    routing, bus, cache = affinity(["a"], ["a", "b"])
    await routing.follow_cache()
    assert set(routing.consuming) == {"a"}
    cache.models = ["b"]  # b loaded, a evicted
    await routing.follow_cache()
    assert set(routing.consuming) == {"b"} and bus.stopped == ["queue-of-a"]


async def test_an_idle_worker_takes_a_waiting_queue_and_gives_up_the_model_it_would_evict():
    routing, bus, cache = affinity(["a"], ["a", "b", "c"])
    bus.depths = {TOPO.model_queue("b"): (4, 0), TOPO.model_queue("a"): (0, 1)}  # c never used: no queue
    await routing.step()
    assert set(routing.consuming) == {"b"}, "a's queue is left: loading b evicts a"
    cache.models = ["b"]
    await routing.follow_cache()
    assert set(routing.consuming) == {"b"} and not routing.taken and not routing.yielded


async def test_a_busy_worker_leaves_a_waiting_queue_to_others_until_it_starves():
    routing, bus, _ = affinity(["a"], ["a", "b"], empty=False)
    bus.depths = {TOPO.model_queue("b"): (4, 0)}
    await routing.step()
    assert set(routing.consuming) == {"a"}
    routing.unserved_since["b"] -= 11  # b's jobs have waited past the patience with no consumer
    await routing.step()
    assert set(routing.consuming) == {"b"}


async def test_under_shared_routing_a_worker_keeps_its_warm_queues_and_takes_no_other():
    routing, bus, _ = affinity(["a"], ["a", "b"], look_around=False)
    bus.depths = {TOPO.model_queue("b"): (4, 0)}  # sent before the switch to shared routing
    routing.unserved_since["b"] = -1e9
    await routing.step()
    assert set(routing.consuming) == {"a"} and not routing.taken


def test_routing_settings_are_read_and_bad_values_named():
    settings = Settings.from_env({"DARKROOM_ROUTING": "shared", "DARKROOM_AFFINITY_PATIENCE": "2.5"})
    assert (settings.routing, settings.affinity_patience) == ("shared", 2.5)
    assert Settings.from_env({}).routing == "affinity"
    with pytest.raises(SettingsError, match="routing"):
        Settings.from_env({"DARKROOM_ROUTING": "random"})
    with pytest.raises(SettingsError, match="DARKROOM_AFFINITY_PATIENCE"):
        Settings.from_env({"DARKROOM_AFFINITY_PATIENCE": "soon"})
    with pytest.raises(SettingsError, match="DARKROOM_AFFINITY_PATIENCE must be 0 or more"):
        Settings.from_env({"DARKROOM_AFFINITY_PATIENCE": "-1"})
