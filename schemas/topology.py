"""RabbitMQ names: the published contract for anyone who subscribes to Darkroom's events.

Every name is `<namespace>.<suffix>`; the namespace is `darkroom` unless DARKROOM_NAMESPACE says
otherwise (tests give each test its own). Routing keys on the events exchange are the event tags.
"""

from __future__ import annotations

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
IMAGE_GENERATED = "image.generated"
IMAGE_SAVED = "image.saved"
IMAGE_DELETED = "image.deleted"
IMAGE_EXPIRED = "image.expired"
WORKER_HEARTBEAT = "worker.heartbeat"

# Routing keys on the commands exchange (direct): each has exactly one consuming queue.
GENERATE_IMAGES = "generate_images"
SWEEP_STALLED = "sweep_stalled"

# Which routing keys each stage's queue receives. The recorder takes every event.
ENRICHER_KEYS = (JOB_ACCEPTED,)
SAVER_KEYS = (IMAGE_GENERATED,)
RECORDER_KEYS = ("#",)
# The reaper follows each job's liveness: everything a worker says about a job, and its end.
REAPER_KEYS = ("job.#", "model.#", IMAGE_GENERATED, WORKER_HEARTBEAT)


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
        """Exchange that receives whatever a stage could not process."""
        return f"{self.namespace}.dead-letter"

    @property
    def dead_letters(self) -> str:
        """The one queue holding dead letters, for operators to list and replay."""
        return f"{self.namespace}.dead-letters"

    @property
    def reaper_dead_letters(self) -> str:
        """The reaper's own copy of every dead letter: it fails the job a parked message belonged to."""
        return f"{self.namespace}.reaper.dead-letters"

    def queue(self, stage: str) -> str:
        """The durable queue a stage consumes (`enricher`, `generator`, `saver`, `recorder`...)."""
        return f"{self.namespace}.{stage}"
