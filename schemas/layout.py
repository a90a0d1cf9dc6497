"""Where each kind of state lives inside the data directory (`DARKROOM_DATA_DIR`).

    events/YYYY-MM-DD.jsonl      append-only log of every event
    jobs/<job_id>.json           current document of each job
    images/YYYY/MM/DD/<id>.png   images, with <id>.json metadata sidecars
    previews/<job_id>.png        latest preview of a running job
    queue.txt                    ids of pending and processing jobs, one a line
    models/                      the built-in model, and LoRAs under models/loras
    state/                       API keys, sessions, presets
    state/models.toml            the runtime catalog: models and LoRAs pulled while running
    state/pulls/<id>.json        each pull's request and progress
    models/.partial/<pull>/      files of a pull in progress (renamed into models/ when verified)
"""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path

import msgspec

_JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_IMAGE_ID = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})_([1-9][0-9]{0,2})$")


def is_job_id(value: str) -> bool:
    """Job ids are lowercase UUIDs; anything else never touches the file system."""
    return bool(_JOB_ID.match(value))


def image_id(job_id: str, number: int) -> str:
    """Image ids name their job and their 1-based place in it, so a retry rewrites, never duplicates."""
    return f"{job_id}_{number}"


def split_image_id(value: str) -> tuple[str, int] | None:
    """(job_id, image number) of a well-formed image id, else None."""
    match = _IMAGE_ID.match(value)
    return (match.group(1), int(match.group(2))) if match else None


LORA_SUFFIXES = (".safetensors", ".bin", ".pt")


def lora_file(folder: Path, name: str) -> Path | None:
    """The file of LoRA `name` (a file name, with or without extension) in `folder`, if any.

    Only the last path component is used, so a name can never reach outside the folder.
    """
    base = Path(name).name
    if not base or base.startswith("."):
        return None
    candidates = [folder / base] if base.endswith(LORA_SUFFIXES) else [folder / f"{base}{s}" for s in LORA_SUFFIXES]
    return next((c for c in candidates if c.is_file()), None)


def lora_names(folder: Path) -> list[str]:
    """Names of the LoRAs in `folder` (file names without extension), sorted."""
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.iterdir() if p.suffix in LORA_SUFFIXES and not p.name.startswith("."))


class DataLayout(msgspec.Struct, frozen=True):
    """Paths inside one data directory."""

    root: str

    @property
    def base(self) -> Path:
        return Path(self.root)

    @property
    def events_dir(self) -> Path:
        return self.base / "events"

    @property
    def jobs_dir(self) -> Path:
        return self.base / "jobs"

    @property
    def images_dir(self) -> Path:
        return self.base / "images"

    @property
    def previews_dir(self) -> Path:
        return self.base / "previews"

    @property
    def models_dir(self) -> Path:
        return self.base / "models"

    @property
    def loras_dir(self) -> Path:
        """The LoRA library: .safetensors files, named by file name."""
        return self.models_dir / "loras"

    @property
    def runtime_catalog(self) -> Path:
        """Models and LoRAs pulled while running (written only by the models stage)."""
        return self.state_dir / "models.toml"

    @property
    def pulls_dir(self) -> Path:
        """One JSON document per pull: its request, state and progress."""
        return self.state_dir / "pulls"

    @property
    def partial_models_dir(self) -> Path:
        """Pulls in progress, one folder each; the same pull resumes into the same folder."""
        return self.models_dir / ".partial"

    @property
    def inputs_dir(self) -> Path:
        """Input images of img2img/inpaint jobs: inputs/<job_id>/init.png, mask.png."""
        return self.base / "inputs"

    @property
    def state_dir(self) -> Path:
        return self.base / "state"

    @property
    def queue_file(self) -> Path:
        return self.base / "queue.txt"

    @property
    def analytics_db(self) -> Path:
        """The DuckDB projection of the event log (rebuildable from it at any time)."""
        return self.base / "analytics.duckdb"

    @property
    def exports_dir(self) -> Path:
        return self.base / "exports"

    def event_log(self, day: date) -> Path:
        return self.events_dir / f"{day.isoformat()}.jsonl"

    def job(self, job_id: str) -> Path:
        return self.jobs_dir / f"{job_id}.json"

    @property
    def staging_dir(self) -> Path:
        """New job documents wait here until the broker confirms their job (then linked in)."""
        return self.jobs_dir / ".staging"

    def preview(self, job_id: str) -> Path:
        return self.previews_dir / f"{job_id}.png"

    @staticmethod
    def image_file_path(created: datetime, image_id: str) -> str:
        """The image's path relative to images/: its job's creation day, then its id."""
        return f"{created:%Y/%m/%d}/{image_id}.png"

    def image(self, file_path: str) -> Path:
        return self.images_dir / file_path

    def sidecar(self, file_path: str) -> Path:
        return (self.images_dir / file_path).with_suffix(".json")

    def ensure(self) -> None:
        for folder in (self.events_dir, self.jobs_dir, self.staging_dir, self.images_dir, self.previews_dir,
                       self.models_dir, self.loras_dir, self.inputs_dir, self.state_dir):
            folder.mkdir(parents=True, exist_ok=True)
