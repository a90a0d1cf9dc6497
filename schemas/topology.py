"""The wire contract: every RabbitMQ name Darkroom uses, in one place.

Exchanges, queues and their arguments, bindings, routing keys and header names: the published
contract for anyone who subscribes to Darkroom's events, and the only place these strings are
spelled. Every name is `<namespace>.<suffix>`; the namespace is `darkroom` unless
DARKROOM_NAMESPACE says otherwise (tests give each test its own). Routing keys on the events
exchange are the event tags.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import msgspec

# Routing keys on the events exchange (topic). Each is the `type` tag of one event class.
JOB_ACCEPTED = "job.accepted"
JOB_ENRICHED = "job.enriched"
JOB_STARTED = "job.started"
JOB_PROGRESSED = "job.progressed"
JOB_COMPLETED = "job.completed"
JOB_FAILED = "job.failed"
JOB_CANCEL_REQUESTED = "job.cancel_requested"
JOB_CANCELLED = "job.cancelled"
JOB_STALLED = "job.stalled"
JOB_REQUEUED = "job.requeued"
MODEL_LOADING = "model.loading"
MODEL_LOADED = "model.loaded"
MODEL_EVICTED = "model.evicted"
# The models stage: pulls of model and LoRA files, and models coming and going from the catalog.
MODEL_PULL_STARTED = "model.pull.started"
MODEL_PULL_PROGRESS = "model.pull.progress"
MODEL_PULL_FAILED = "model.pull.failed"
MODEL_AVAILABLE = "model.available"
MODEL_REMOVED = "model.removed"
IMAGE_GENERATED = "image.generated"
IMAGE_SAVED = "image.saved"
IMAGE_DELETED = "image.deleted"
IMAGE_EXPIRED = "image.expired"
WORKER_HEARTBEAT = "worker.heartbeat"
# A generator worker says it is up, where, on what and how busy (periodic, transient; not per job).
WORKER_PRESENCE = "worker.presence"
WEBHOOK_DELIVERED = "webhook.delivered"
WEBHOOK_FAILED = "webhook.failed"

# Routing keys on the commands exchange (direct): each has exactly one consuming queue.
GENERATE_IMAGES = "generate_images"
SWEEP_STALLED = "sweep_stalled"
DELIVER_WEBHOOK = "deliver_webhook"
PULL_MODEL = "pull_model"
REMOVE_MODEL = "remove_model"

# Model-affinity routing (DARKROOM_ROUTING=affinity, the default): a GenerateImages for model M is
# sent with `generate_images.<M>` to M's own queue, `<namespace>.generator.<M>`, which the workers
# with M warm consume; `shared` sends every one with `generate_images` to the one generator queue
# (which every worker always consumes too). <M> is the model id; any character but letters,
# digits, `.`, `_` and `-` (darkroom.toml keys may hold them) becomes `:` and its UTF-8 bytes in hex
# (AMQP allows only `[A-Za-z0-9-_.:]` in queue names), and a long id is cut and given a hash.
ROUTINGS = ("affinity", "shared")
MODEL_QUEUE_STAGE = "generator"
_PLAIN = re.compile(r"[A-Za-z0-9._-]")
# Queue names and routing keys are at most 255 bytes; the namespace and the prefix need some.
_LONGEST_MODEL_NAME = 160


def model_name(model_id: str) -> str:
    """How model `model_id` is spelled in its queue name and routing key (`my model` -> `my:20model`)."""
    if not model_id:
        raise ValueError("a model queue needs a model id, got an empty one")
    name = "".join(c if _PLAIN.fullmatch(c) else "".join(f":{b:02X}" for b in c.encode()) for c in model_id)
    if len(name) > _LONGEST_MODEL_NAME:
        name = f"{name[:_LONGEST_MODEL_NAME - 17]}.{hashlib.sha256(model_id.encode()).hexdigest()[:16]}"
    return name


def generate_images_key(model_id: str) -> str:
    """The routing key (commands exchange) of a GenerateImages for `model_id` under affinity routing."""
    return f"{GENERATE_IMAGES}.{model_name(model_id)}"


# Topic wildcards: `*` is one dot-separated word, `#` any number of them (none included).
EVERY_EVENT = "#"
EVERY_JOB_EVENT = "job.#"
EVERY_MODEL_EVENT = "model.#"
EVERY_IMAGE_EVENT = "image.#"
EVERY_WEBHOOK_EVENT = "webhook.#"

# Which routing keys each stage's queue receives. The recorder takes every event.
ENRICHER_KEYS = (JOB_ACCEPTED,)
SAVER_KEYS = (IMAGE_GENERATED,)
RECORDER_KEYS = (EVERY_EVENT,)
# The reaper follows each job's liveness: everything a worker says about a job, and its end (a
# worker's model loads included; the models stage's pulls are no job's).
REAPER_KEYS = (EVERY_JOB_EVENT, MODEL_LOADING, MODEL_LOADED, MODEL_EVICTED, IMAGE_GENERATED, WORKER_HEARTBEAT)
# What a generator follows about the catalog: a model appeared (re-read it) or went (drop it).
CATALOG_CHANGE_KEYS = (MODEL_AVAILABLE, MODEL_REMOVED)
# The notifier: the events a webhook may ask for (job.*, image.saved), never image.generated's bytes.
NOTIFIER_KEYS = (EVERY_JOB_EVENT, IMAGE_SAVED)

# Exchange kinds, by the Topology attribute that names the exchange.
EVENTS, COMMANDS = "events", "commands"

# stage: (exchange its queue is bound to, routing keys). Each stage consumes `<namespace>.<stage>`.
STAGE_BINDINGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "enricher": (EVENTS, ENRICHER_KEYS),
    "generator": (COMMANDS, (GENERATE_IMAGES,)),
    "saver": (EVENTS, SAVER_KEYS),
    "recorder": (EVENTS, RECORDER_KEYS),
    "reaper": (EVENTS, REAPER_KEYS),
    "reaper.commands": (COMMANDS, (SWEEP_STALLED,)),
    "notifier": (EVENTS, NOTIFIER_KEYS),
    "notifier.deliveries": (COMMANDS, (DELIVER_WEBHOOK,)),
    "models": (COMMANDS, (PULL_MODEL, REMOVE_MODEL)),
}

# Message headers. Ours, on a message a stage parked itself: why, and from which queue.
REASON_HEADER = "x-darkroom-reason"
QUEUE_HEADER = "x-darkroom-queue"
# RabbitMQ's: how often a quorum queue delivered the message before; where and why it died.
DELIVERY_COUNT_HEADER = "x-delivery-count"
DEATH_HEADER = "x-death"
# Headers that describe a message's parking, dropped when it is sent back (replayed).
PARKING_HEADER_PREFIXES = ("x-death", "x-first-death", "x-last-death", "x-darkroom")

# Where request-reply answers go (RabbitMQ's direct reply-to pseudo-queue).
REPLY_TO = "amq.rabbitmq.reply-to"

# Deliveries a stage queue allows before the broker parks a message that keeps crashing its consumer.
DELIVERY_LIMIT = 5
# A generator command that kills its worker is tried four times in all (one delivery and three
# redeliveries), then parked; the reaper fails its job with the reason.
GENERATOR_DELIVERY_LIMIT = 3
DELIVERY_LIMITS = {"generator": GENERATOR_DELIVERY_LIMIT}
# A follower's private queue that outlives its process's disconnects lives on this long unused
# (then the broker deletes it), collecting the events the process missed.
FOLLOWER_KEEP_SECONDS = 600


# Events a live stream (SSE, WebSocket) carries: every event of a job but the workers' heartbeats.
UNSTREAMED_KEYS = (WORKER_HEARTBEAT,)
# Keys that end a job's stream.
TERMINAL_KEYS = (JOB_COMPLETED, JOB_FAILED, JOB_CANCELLED)


def follower_arguments() -> dict[str, Any]:
    return {"x-expires": FOLLOWER_KEEP_SECONDS * 1000}


# The dead-letter queues: quorum (replicated, durable), no delivery limit of their own.
PARKED_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}


class Topology(msgspec.Struct, frozen=True):
    """The exchange and queue names of one Darkroom installation."""

    namespace: str = "darkroom"

    @property
    def events(self) -> str:
        """Durable topic exchange every event is published to, keyed by its tag."""
        return f"{self.namespace}.events"

    @property
    def commands(self) -> str:
        """Durable direct exchange for commands, keyed by the command tag."""
        return f"{self.namespace}.commands"

    @property
    def dead_letter(self) -> str:
        """Exchange (fanout) that receives whatever a stage could not process."""
        return f"{self.namespace}.dead-letter"

    @property
    def dead_letters(self) -> str:
        """The one queue holding dead letters, for operators to list and replay."""
        return f"{self.namespace}.dead-letters"

    @property
    def reaper_dead_letters(self) -> str:
        """The reaper's own copy of every dead letter: it fails the job a parked message belonged to."""
        return f"{self.namespace}.reaper.dead-letters"

    def webhook_retry_queue(self, tries: int) -> str:
        """Where a webhook delivery waits before try `tries + 1`: one queue per retry, so that a
        message's expiry (its backoff) is never held up behind a longer one's. When it expires the
        broker dead-letters it back to the deliveries queue."""
        return f"{self.namespace}.notifier.retry.{tries}"

    def webhook_retry_arguments(self) -> dict[str, Any]:
        return {"x-dead-letter-exchange": self.commands, "x-dead-letter-routing-key": DELIVER_WEBHOOK}

    def queue(self, stage: str) -> str:
        """The durable queue a stage consumes (`enricher`, `generator`, `saver`, `recorder`...)."""
        return f"{self.namespace}.{stage}"

    def model_queue(self, model_id: str) -> str:
        """The generator queue of one model (affinity routing): its jobs wait here for a worker
        that has it warm."""
        return f"{self.queue(MODEL_QUEUE_STAGE)}.{model_name(model_id)}"

    def model_queue_arguments(self, model_id: str) -> dict[str, Any]:
        """The generator queue's arguments (delivery limit, dead letters, reject-publish); its dead
        letters name the model queue they came from, and are the generator's to the reaper."""
        return {**self.queue_arguments(MODEL_QUEUE_STAGE), "x-dead-letter-routing-key": self.model_queue(model_id)}

    def stage(self, queue: str) -> str:
        """The stage a queue of this namespace belongs to (the inverse of `queue`); a model's
        generator queue belongs to `generator`."""
        stage = queue.removeprefix(f"{self.namespace}.")
        return MODEL_QUEUE_STAGE if stage.startswith(f"{MODEL_QUEUE_STAGE}.") else stage

    def queue_arguments(self, stage: str) -> dict[str, Any]:
        """The arguments a queue is declared with (every declaration must match).

        Stage queues are quorum queues that count deliveries and dead-letter poison messages,
        at least once, instead of losing them; anything else (the dead-letter queues) is a
        plain quorum queue.
        """
        if stage not in STAGE_BINDINGS:
            return dict(PARKED_ARGUMENTS)
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMITS.get(stage, DELIVERY_LIMIT),
            "x-dead-letter-exchange": self.dead_letter,
            "x-dead-letter-routing-key": self.queue(stage),
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }


def key_matches(pattern: str, key: str) -> bool:
    """Whether a topic binding `pattern` routes `key` (AMQP rules: `*` one word, `#` zero or more)."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and (p[0] == "*" or p[0] == k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


def consumers_of(key: str, exchange: str = EVENTS) -> list[str]:
    """The stages whose queue receives a message published with routing `key` on `exchange`."""
    found = []
    for stage, (bound_to, patterns) in STAGE_BINDINGS.items():
        if bound_to != exchange:
            continue
        if any(key_matches(p, key) if exchange == EVENTS else p == key for p in patterns):
            found.append(stage)
    return found


class ParkedOrigin(msgspec.Struct, frozen=True, kw_only=True):
    """Where a parked (dead-lettered) message came from and why, as its headers say."""

    queue: str | None = None
    # Set when a stage parked the message itself (it could not decode or handle it).
    reason: str | None = None
    # Set when the broker parked it (e.g. `delivery_limit`: it kept killing its consumer).
    broker_reason: str | None = None
    deliveries: int | None = None

    @property
    def parked_by_stage(self) -> bool:
        return self.reason is not None


def parked_origin(headers: Mapping[str, Any] | None) -> ParkedOrigin:
    """Read a parked message's headers: ours (`x-darkroom-*`) first, else RabbitMQ's newest `x-death`."""
    headers = headers or {}
    deaths = headers.get(DEATH_HEADER) or [{}]
    death = deaths[0] if isinstance(deaths, list | tuple) and deaths and isinstance(deaths[0], Mapping) else {}
    queue = headers.get(QUEUE_HEADER) or death.get("queue")
    reason = headers.get(REASON_HEADER)
    return ParkedOrigin(
        queue=str(queue) if queue else None,
        reason=None if reason is None else str(reason),
        broker_reason=str(death["reason"]) if death.get("reason") else None,
        deliveries=int(death["count"]) if isinstance(death.get("count"), int) else None,
    )


def unparked_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """A parked message's headers without those that describe its parking (to send it back)."""
    return {k: v for k, v in headers.items() if not k.startswith(PARKING_HEADER_PREFIXES)}
