"""The wire contract: which stage queues receive each message, derived from the bindings in
schemas/topology.py (topic wildcards included). docs/architecture.md ("Who reacts to what")
shows the same table; this test fails when the two drift apart."""

from __future__ import annotations

from pathlib import Path

from schemas import topology
from schemas.events import EVENT_TYPES, TRANSIENT_EVENTS, AnyCommand
from schemas.topology import Topology, consumers_of, key_matches, parked_origin, unparked_headers

DOCS = Path(__file__).parents[2] / "docs" / "architecture.md"
COMMAND_TYPES = AnyCommand.__args__  # type: ignore[attr-defined]


def who_reacts_table() -> str:
    """A markdown table: each message's routing key, and the stage queues that receive it."""
    rows = ["| message | exchange | routing key | stage queues that receive it |", "|---|---|---|---|"]
    for kind in (*EVENT_TYPES, *COMMAND_TYPES):
        key = kind.__struct_config__.tag
        exchange = topology.EVENTS if kind in EVENT_TYPES else topology.COMMANDS
        name = f"`{kind.__name__}`" + (" (transient)" if kind in TRANSIENT_EVENTS else "")
        rows.append(f"| {name} | {exchange} | `{key}` | {', '.join(consumers_of(key, exchange)) or '-'} |")
    return "\n".join(rows)


def test_topic_wildcards_follow_amqp_rules():
    assert key_matches("#", "job.accepted")
    assert key_matches("job.#", "job.cancel_requested")
    assert key_matches("job.#", "job")
    assert key_matches("job.*", "job.started")
    assert not key_matches("job.*", "job")
    assert not key_matches("job.#", "image.saved")
    assert key_matches("image.generated", "image.generated")
    assert not key_matches("image.generated", "image.saved")


def test_every_event_reaches_the_recorder_and_every_command_one_queue():
    for kind in EVENT_TYPES:
        assert "recorder" in consumers_of(kind.__struct_config__.tag), kind.__name__
    for kind in COMMAND_TYPES:
        assert len(consumers_of(kind.__struct_config__.tag, topology.COMMANDS)) == 1, kind.__name__


def test_the_stages_receive_what_they_handle():
    assert consumers_of(topology.JOB_ACCEPTED) == ["enricher", "recorder", "reaper", "notifier"]
    assert consumers_of(topology.IMAGE_GENERATED) == ["saver", "recorder", "reaper"]  # never its bytes to the notifier
    assert consumers_of(topology.IMAGE_SAVED) == ["recorder", "notifier"]
    assert consumers_of(topology.WEBHOOK_DELIVERED) == ["recorder"]  # the notifier does not hear its own reports
    assert consumers_of(topology.DELIVER_WEBHOOK, topology.COMMANDS) == ["notifier.deliveries"]
    assert consumers_of(topology.GENERATE_IMAGES, topology.COMMANDS) == ["generator"]
    assert consumers_of(topology.SWEEP_STALLED, topology.COMMANDS) == ["reaper.commands"]


def test_the_architecture_notes_show_the_current_table():
    table = who_reacts_table()
    print(table)
    assert table in DOCS.read_text(), f"docs/architecture.md 'Who reacts to what' is stale; it should read:\n{table}"


def test_stage_queues_dead_letter_and_parked_queues_do_not():
    topo = Topology("ns")
    generator = topo.queue_arguments("generator")
    assert generator["x-delivery-limit"] == topology.GENERATOR_DELIVERY_LIMIT
    assert generator["x-dead-letter-exchange"] == topo.dead_letter
    assert generator["x-dead-letter-routing-key"] == "ns.generator"
    assert topo.queue_arguments("saver")["x-delivery-limit"] == topology.DELIVERY_LIMIT
    assert topo.queue_arguments(topo.stage(topo.dead_letters)) == topology.PARKED_ARGUMENTS


def test_a_parked_message_says_where_it_came_from_and_why():
    ours = parked_origin({topology.REASON_HEADER: "undecodable: x", topology.QUEUE_HEADER: "ns.saver"})
    assert ours.parked_by_stage and ours.queue == "ns.saver" and ours.reason == "undecodable: x"
    death = [{"queue": "ns.generator", "reason": "delivery_limit", "count": 4}]
    broker = parked_origin({topology.DEATH_HEADER: death, "x-first-death-queue": "ns.generator", "trace": "1"})
    assert not broker.parked_by_stage
    assert (broker.queue, broker.broker_reason, broker.deliveries) == ("ns.generator", "delivery_limit", 4)
    assert parked_origin(None) == parked_origin({})
    assert unparked_headers({topology.DEATH_HEADER: death, "x-first-death-queue": "q", topology.REASON_HEADER: "r",
                             "trace": "1"}) == {"trace": "1"}
