"""Process settings, read from `DARKROOM_*` environment variables.

Every value has a default that works on a laptop with no GPU and no internet.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


SERVICES = ("recorder", "saver", "enricher", "models", "generator", "reaper", "notifier", "ingress")
# The foreign APIs the ingress can speak (services/ingress/dialects), by their OpenAPI tag.
DIALECTS = ("openai", "sdapi", "weights", "chutes", "cyberimage", "a1111-bot")


class SettingsError(ValueError):
    """A DARKROOM_* variable holds a value Darkroom cannot use; the message names it."""


AMQP_SCHEMES = ("amqp", "amqps")


def broker_urls(raw: str, name: str = "DARKROOM_AMQP_URL") -> tuple[str, ...]:
    """The broker addresses in `raw`: one AMQP URL, or several separated by commas (the nodes of one
    RabbitMQ cluster: a process connects to one and fails over to the others). Each must be a whole
    `amqp://` or `amqps://` URL with a host; the error names the one that is not."""
    urls = tuple(part.strip() for part in raw.split(","))
    for number, url in enumerate(urls, start=1):
        where = f"{name}: address {number} of {len(urls)}"
        if not url:
            raise SettingsError(f"{where} is empty (addresses are separated by single commas, e.g. "
                                "amqp://user:pass@h1:5672/,amqp://user:pass@h2:5672/)")
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() not in AMQP_SCHEMES:
            raise SettingsError(f"{where} ({redact_url(url)!r}) must start with amqp:// or amqps://")
        host = rest.split("/", 1)[0].rsplit("@", 1)[-1].split(":", 1)[0]
        if not host:
            raise SettingsError(f"{where} ({redact_url(url)!r}) names no host")
    return urls


def redact_url(url: str) -> str:
    """The URL without its password (errors and logs may be shipped elsewhere)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    user_info, at_host = rest.split("@", 1)
    return f"{scheme}://{user_info.split(':', 1)[0]}:***@{at_host}"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a Darkroom process needs to know about where it runs."""

    data_dir: str = "./var"
    # None means `darkroom run` starts a private broker and fills this in for the services. Several
    # comma-separated URLs name the nodes of one cluster (see `broker_urls`).
    amqp_url: str | None = None
    namespace: str = "darkroom"
    host: str = "127.0.0.1"
    port: int = 8000
    config_path: str = "darkroom.toml"
    device: str = "auto"
    # CPU threads torch may use; 0 = auto: on a CPU, all cores but one (the control plane keeps a
    # core; torch with every core collapses when another process wants one).
    torch_threads: int = 0
    # Bytes the generator may keep in warm models before it evicts the least recently used.
    memory_budget: int = 8 * 1024**3
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "info"
    # Port for the private broker `darkroom run` starts; 0 picks a free one.
    broker_port: int = 0
    # An address it also listens on (besides 127.0.0.1, which this machine's services use): an
    # interface address (or 0.0.0.0) lets generator workers on other hosts in, each with its own
    # user (`darkroom workers add`; `guest` stays loopback-only).
    broker_host: str = "127.0.0.1"
    # TLS to the broker (amqp_url `amqps://...`, for every service and `darkroom worker`): the CA
    # file its certificate is checked against (empty: the system's CAs), and a client certificate
    # and key for brokers that ask for one.
    broker_ca: str = ""
    broker_cert: str = ""
    broker_key: str = ""
    # The private broker's own certificate and key: when both are set, it also listens for amqps
    # on broker_tls_port (0 picks a free one), on loopback and on broker_host, and `darkroom
    # workers add` prints amqps commands (with broker_ca, when set, as the workers' CA).
    broker_tls_cert: str = ""
    broker_tls_key: str = ""
    broker_tls_port: int = 0
    # Transient progress events per job per second, at most.
    progress_rate: float = 4.0
    # A preview image every this many steps (0: none).
    preview_every: int = 5
    # Images one pipeline call may hold, across compatible queued jobs (1: no batching; 0: by
    # device: 8 on CUDA, 4 elsewhere).
    max_batch: int = 0
    # Torch dtype of models whose catalog entry says `auto`: auto = float16 on CUDA (bfloat16 for
    # SD3 and Flux), float32 on a CPU.
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # While jobs are arriving, a generator waits this many milliseconds at most for compatible
    # jobs to fill a call (a lone job on an idle generator never waits).
    batch_wait_ms: float = 20.0
    # Decode, PNG-encode and publish a batch while the next one denoises (off: one batch at a time).
    overlap: Literal["on", "off"] = "on"
    # One tiny generation per batch size (1..max_batch) for the default model before consuming.
    warmup: Literal["on", "off"] = "on"
    # torch.compile of the UNet and VAE decoder (CUDA): auto = on for CUDA only, and only kept
    # when warm-up shows it faster with the same images (within COMPILE_TOLERANCE).
    compile: Literal["auto", "on", "off"] = "auto"
    max_prompt_length: int = 500
    max_body_bytes: int = 20 * 1024**2
    # Slow or oversized clients (the ingress closes what passes these): bytes of one request's
    # line and headers, seconds to send them, seconds to send the body, connections at once
    # (beyond it: 503).
    max_header_bytes: int = 32 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 1000
    # API keys required (`off` only for a local sandbox: everyone is then an anonymous admin).
    auth: Literal["on", "off"] = "on"
    # Generation requests allowed per caller ("10/hour", "none"): without a key, per IP address
    # (CyberImage's default); with a key, unless `darkroom keys` set one for it.
    anonymous_rate: str = "10/hour"
    key_rate: str = "300/hour"
    # Quotas of a (non-admin) key unless set for it: images per UTC day, jobs queued at once (0: none).
    key_daily_images: int = 1000
    key_queued_jobs: int = 20
    # Origins allowed to call the API from a browser ("*" for any); empty: CORS closed.
    cors_origins: str = ""
    # Which services `darkroom run` starts on this machine (a GPU box may run only `generator`).
    services: str = "recorder,saver,enricher,models,generator,reaper,notifier,ingress"
    # Generator processes `darkroom run` starts (e.g. one per GPU, with CUDA_VISIBLE_DEVICES set by you).
    generators: int = 1
    # Attempts a job gets (stalls, crashes, pipeline errors) before it fails with the reason.
    max_attempts: int = 3
    # A processing job silent this long (no step, no heartbeat) is stalled and requeued.
    stall_timeout: float = 30.0
    # Generators say "still working on it" this often (seconds) for every job they hold.
    heartbeat_interval: float = 5.0
    # On SIGTERM a generator lets its current call run this long, then stops it at the next step
    # and puts its jobs back in the queue.
    shutdown_grace: float = 10.0
    # Memory the DuckDB read model may hold (its cache and transactions), e.g. "512MB" or "2GB".
    duckdb_memory: str = "512MB"
    # Operators' SQL (/v1/ops/query) runs at most this many at once, on threads of its own.
    ops_query_slots: int = 2
    # ... and each is interrupted after this many seconds (its caller gets a 400 saying so).
    ops_query_seconds: float = 30.0
    # Seconds an image is kept before the retention janitor deletes it (image.expired); 0: forever.
    image_ttl: float = 0.0
    # Foreign dialects (OpenAI Images under /openai/v1, A1111's sdapi under /sdapi/v1): seconds a
    # synchronous call holds the request while its job runs (the job goes on after that, and stays
    # retrievable under /v1/jobs); whether callers without credentials are let in from loopback
    # (`loopback`, as the anonymous tenant, limited per IP by anonymous_rate) or not (`off`);
    # A1111's --api-auth, "user:password[,user2:password2]", each user its own tenant; and OpenAI
    # model aliases mapped to catalog models, "dall-e-3=sdxl,gpt-image-1=sdxl" (unnamed ones: the
    # default model).
    dialect_wait: float = 600.0
    dialect_anonymous: Literal["loopback", "off"] = "loopback"
    sdapi_auth: str = ""
    openai_models: str = ""
    # Which foreign dialects the ingress serves: "all", "none", or a list ("openai,sdapi,chutes");
    # a dialect left out has no routes (404) and is not in the OpenAPI schema.
    dialects: str = "all"
    # An OpenAI-compatible chat endpoint the enricher asks to rewrite styled prompts (overrides
    # darkroom.toml's [enrichment.llm] url and model); empty: style templates only.
    enrich_llm_url: str = ""
    enrich_llm_model: str = ""
    # Webhooks: hosts or CIDRs they may reach although private, loopback or link-local
    # (comma-separated; also `[webhooks] allow` in darkroom.toml); seconds per try; tries in all
    # (retried with exponential backoff from `webhook_backoff` seconds, with jitter); bytes of an
    # answer read at most.
    webhook_allow: str = ""
    webhook_timeout: float = 10.0
    webhook_attempts: int = 6
    webhook_backoff: float = 5.0
    webhook_max_response_bytes: int = 64 * 1024
    # Live streams: seconds between SSE keep-alive comments.
    stream_keepalive: float = 15.0
    # Disk space the models stage leaves free: a pull that would eat into it is refused up front.
    models_disk_reserve: int = 1024**3
    # Remote generator workers (`darkroom worker`): the control node's ingress, from which a
    # worker fetches the LoRA files its jobs name, by sha256 (empty: LoRAs come from this data
    # directory's models/loras, as on the control node); the worker key it sends; and how often
    # every generator announces itself (worker.presence, listed by GET /v1/workers).
    ingress_url: str = ""
    worker_token: str = ""
    presence_interval: float = 10.0
    # Where jobs wait for a generator: `affinity`, each model's own queue, consumed by the workers
    # that have it warm (a worker switches models only when its models' queues are empty); or
    # `shared`, one queue for all, whichever worker is free takes the next job (random dispatch).
    routing: Literal["affinity", "shared"] = "affinity"
    # Seconds a model's jobs may wait with no worker consuming its queue before a busy worker
    # takes it over at its next batch boundary (an idle worker takes it at once).
    affinity_patience: float = 10.0

    def batch_capacity(self, device_type: str) -> int:
        """Images per pipeline call: `max_batch`, or by device when it is 0."""
        if self.max_batch > 0:
            return self.max_batch
        return 8 if device_type == "cuda" else 4

    @property
    def service_list(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.services.split(",") if name.strip())

    def dialect_on(self, name: str) -> bool:
        names = {part.strip().lower() for part in self.dialects.split(",") if part.strip()}
        return "all" in names or name in names

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from DARKROOM_* variables, naming any variable whose value is bad."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in msgspec.structs.fields(cls):
            name = f"DARKROOM_{field.name.upper()}"
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[field.name] = _parse(name, raw, field.type)
        # Common aliases people reach for first.
        if "memory_budget" not in values and env.get("DARKROOM_MEMORY_BUDGET_MB"):
            values["memory_budget"] = _parse("DARKROOM_MEMORY_BUDGET_MB", env["DARKROOM_MEMORY_BUDGET_MB"] + "MiB", int)
        try:
            settings = msgspec.convert(values, cls)
        except msgspec.ValidationError as exc:
            raise SettingsError(f"invalid DARKROOM_* setting: {exc}") from exc
        if settings.affinity_patience < 0:
            raise SettingsError(f"DARKROOM_AFFINITY_PATIENCE must be 0 or more seconds, got {settings.affinity_patience}")
        if settings.amqp_url:
            broker_urls(settings.amqp_url)
        unknown = sorted(set(settings.service_list) - set(SERVICES))
        if unknown:
            raise SettingsError(f"DARKROOM_SERVICES names unknown services {unknown}; valid: {', '.join(SERVICES)}")
        for name in ("broker_ca", "broker_cert", "broker_key", "broker_tls_cert", "broker_tls_key"):
            given = getattr(settings, name)
            if given and not Path(given).is_file():
                raise SettingsError(f"DARKROOM_{name.upper()} names {given!r}, which is not a file")
        for one, other in (("broker_cert", "broker_key"), ("broker_tls_cert", "broker_tls_key")):
            if bool(getattr(settings, one)) != bool(getattr(settings, other)):
                raise SettingsError(f"DARKROOM_{one.upper()} and DARKROOM_{other.upper()} go together: set both or neither")
        dialects = {part.strip().lower() for part in settings.dialects.split(",") if part.strip()}
        unknown = sorted(dialects - {*DIALECTS, "all", "none"})
        if unknown:
            raise SettingsError(f"DARKROOM_DIALECTS names unknown dialects {unknown}; valid: all, none, "
                                f"{', '.join(DIALECTS)}")
        return settings


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(name: str, raw: str) -> float:
    """Seconds from "600", "10m", "24h" or "7d"."""
    match = _DURATION.match(raw)
    if not match:
        raise SettingsError(f"{name} must be a duration like 600, 10m, 24h or 7d, got {raw!r}")
    return float(match.group(1)) * _SECONDS[(match.group(2) or "").lower()]


def _parse(name: str, raw: str, kind: object) -> object:
    if name in ("DARKROOM_MEMORY_BUDGET", "DARKROOM_MODELS_DISK_RESERVE"):
        return parse_size(name, raw)
    if name in ("DARKROOM_IMAGE_TTL", "DARKROOM_DIALECT_WAIT"):
        return parse_duration(name, raw)
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    return raw


def parse_size(name: str, raw: str) -> int:
    """`8GiB`, `512MB`, `1.5g` or a plain byte count, as bytes."""
    match = _SIZE.match(raw)
    if not match:
        raise SettingsError(f"{name} must be a size like 8GiB or 512MB, got {raw!r}")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    base = unit[:1]
    factor = _UNITS[base] if "i" not in unit else 1024 ** "bkmgt".index(base)
    return int(number * factor)
