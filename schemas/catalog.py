"""The model catalog and style templates, read from `darkroom.toml`.

The built-in `tiny-sd` model is always present: a random-weight Stable Diffusion pipeline that
Darkroom builds into the data directory on first start (no download). Real models are entries
that point at a local folder, a single-file checkpoint with a local config folder, or a Hugging
Face repo id (for users with internet).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

import msgspec

from schemas.webhooks import WebhooksSection

TINY_MODEL_ID = "tiny-sd"

Family = Literal["sd1.x", "sd2.x", "sdxl", "sd3", "flux"]

# A1111 sampler names and the diffusers scheduler (class name, config overrides) each maps to.
# Data only: pipelines/samplers.py builds the schedulers; the ingress validates names against it.
SAMPLERS: dict[str, tuple[str, dict[str, object]]] = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 Karras": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
    "DPM++ 2S": ("DPMSolverSinglestepScheduler", {}),
    "DPM++ 2S Karras": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    "DDIM": ("DDIMScheduler", {}),
    "PLMS": ("PNDMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "DEIS": ("DEISMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}
Capability = Literal["txt2img", "img2img", "inpaint"]


class CatalogError(ValueError):
    """darkroom.toml cannot be used; the message says where and why."""


class ModelDefaults(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings a job gets when it does not choose its own."""

    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    width: int = 512
    height: int = 512
    # An A1111 sampler name; None keeps the scheduler the model was saved with.
    sampler: str | None = None
    strength: float = 0.75
    hr_denoising_strength: float = 0.7


class ModelLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The largest job a model accepts; larger requests are refused before any GPU work."""

    max_width: int = 1024
    max_height: int = 1024
    max_steps: int = 100


class ModelEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One model Darkroom can load."""

    id: str = ""
    # A local diffusers folder, a single-file checkpoint (.safetensors/.ckpt), or a hub repo id.
    source: str
    # For single-file checkpoints: a local diffusers folder with the matching configs (offline).
    config: str | None = None
    family: Family = "sd1.x"
    description: str = ""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = "auto"
    supports_negative_prompt: bool = True
    capabilities: tuple[Capability, ...] = ("txt2img", "img2img", "inpaint")
    defaults: ModelDefaults = ModelDefaults()
    limits: ModelLimits = ModelLimits()

    def settings_error(self, width: int, height: int, steps: int) -> str | None:
        """What is wrong with these settings for this model, naming the field; None when they fit."""
        for name, value, limit in (("width", width, self.limits.max_width), ("height", height, self.limits.max_height)):
            if value % 8:
                return f"settings.{name} must be a multiple of 8, got {value}"
            if value > limit:
                return f"settings.{name} {value} is over the limit of {limit} for model {self.id!r}"
        if not 1 <= steps <= self.limits.max_steps:
            return f"settings.num_inference_steps must be 1-{self.limits.max_steps} for model {self.id!r}, got {steps}"
        return None


class Style(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A prompt template: `{prompt}` is replaced by the user's prompt."""

    template: str
    negative_prompt: str | None = None
    description: str = ""


class LlmConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[enrichment.llm]`: an OpenAI-compatible chat endpoint that rewrites prompts in the chosen
    style. Off (no request leaves the machine) unless `url` is set here or in
    DARKROOM_ENRICH_LLM_URL; any failure falls back to the style's template."""

    # The API base (".../v1") or the full ".../chat/completions" URL.
    url: str = ""
    model: str = ""
    # The environment variable holding the API key (sent as a Bearer token), if it needs one.
    api_key_env: str | None = None
    timeout_s: float = 10.0
    # Further attempts after a failed one (0-3), each with the full timeout.
    retries: int = 1
    max_tokens: int = 200


class EnrichmentConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[enrichment]`: how the enricher settles prompts (style templates by default)."""

    llm: LlmConfig = LlmConfig()


class Catalog(msgspec.Struct, frozen=True, kw_only=True):
    """Every model and style this installation offers."""

    models: dict[str, ModelEntry]
    default: str
    styles: dict[str, Style]
    enrichment: EnrichmentConfig = EnrichmentConfig()

    def model(self, model_id: str | None) -> ModelEntry:
        """The entry for `model_id` (the default when None); KeyError names the valid ids."""
        key = model_id or self.default
        try:
            return self.models[key]
        except KeyError:
            raise KeyError(f"unknown model {key!r}; valid models: {', '.join(sorted(self.models))}") from None


class ModelFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One file of a pulled model: its path inside the model, size and content hash (the hash is
    what a remote generator will ask the control node for)."""

    path: str
    size: int
    sha256: str


class PulledModel(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A model or LoRA the models stage provisioned, as the runtime catalog records it."""

    kind: Literal["checkpoint", "lora"] = "checkpoint"
    # The repo id, URL or path it came from, and the hub revision (commit) when there was one.
    origin: str
    revision: str | None = None
    pulled_at: str = ""
    # Relative to the data directory: a diffusers folder, a single file, or a LoRA file.
    path: str
    files: list[ModelFile] = []
    # Checkpoints only: the catalog entry (source and config relative to the data directory).
    entry: ModelEntry | None = None

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)


class RuntimeCatalog(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`state/models.toml`: what the models stage pulled while Darkroom ran (written only by it)."""

    models: dict[str, PulledModel] = {}
    loras: dict[str, PulledModel] = {}


def parse_runtime_catalog(text: str, path: Path) -> RuntimeCatalog:
    try:
        return msgspec.convert(tomllib.loads(text), RuntimeCatalog)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise CatalogError(f"{path}: {exc}") from exc


def load_runtime_catalog(data_dir: Path) -> RuntimeCatalog:
    path = runtime_catalog_path(data_dir)
    return parse_runtime_catalog(path.read_text(), path) if path.exists() else RuntimeCatalog()


def runtime_catalog_path(data_dir: Path) -> Path:
    return data_dir / "state" / "models.toml"


def pulled_entry(model_id: str, pulled: PulledModel, data_dir: Path) -> ModelEntry | None:
    """A pulled checkpoint's catalog entry with its paths made absolute (None for a LoRA)."""
    if pulled.entry is None:
        return None

    def absolute(value: str) -> str:
        return value if Path(value).is_absolute() else str(data_dir / value)

    entry = pulled.entry
    return msgspec.structs.replace(entry, id=model_id, source=absolute(entry.source),
                                   config=absolute(entry.config) if entry.config else None)


MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def model_name_from_source(source: str) -> str:
    """The id a pulled model (or LoRA) gets when none is given: its repo's, file's or folder's name."""
    tail = source.rstrip("/").split("?")[0].rsplit("/", 1)[-1]
    for suffix in (".safetensors", ".ckpt", ".pt", ".pth", ".bin"):
        tail = tail.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-._")[:64] or "model"


class _CatalogFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    default: str | None = None
    models: dict[str, ModelEntry] = {}
    styles: dict[str, Style] = {}
    enrichment: EnrichmentConfig = EnrichmentConfig()
    webhooks: WebhooksSection = msgspec.field(default_factory=WebhooksSection)


DEFAULT_STYLES: dict[str, Style] = {
    "cyberpunk": Style(
        template="{prompt}, cyberpunk, neon-lit night city, rain-slick streets, holographic signs, "
        "high contrast, cinematic lighting, highly detailed",
        negative_prompt="blurry, low quality, washed out",
        description="Neon, rain and chrome",
    ),
    "anime": Style(
        template="{prompt}, anime style, clean line art, cel shading, vibrant colours, "
        "expressive characters, studio quality key visual",
        negative_prompt="photorealistic, blurry, extra limbs",
        description="Cel-shaded anime key visual",
    ),
    "realistic": Style(
        template="{prompt}, photorealistic, natural lighting, 35mm photograph, sharp focus, "
        "fine detail, realistic textures",
        negative_prompt="cartoon, painting, illustration, blurry",
        description="Photographic realism",
    ),
    "fantasy": Style(
        template="{prompt}, epic fantasy, ethereal atmosphere, golden hour light, ornate details, "
        "digital painting, concept art",
        negative_prompt="modern, blurry, low quality",
        description="Painterly high fantasy",
    ),
    "sci-fi": Style(
        template="{prompt}, science fiction, futuristic technology, sleek spacecraft design, "
        "volumetric lighting, matte painting",
        negative_prompt="medieval, blurry, low quality",
        description="Hard science-fiction concept art",
    ),
    "enhance": Style(
        template="{prompt}, masterpiece, best quality, highly detailed, sharp focus, "
        "professional composition, beautiful lighting",
        negative_prompt="low quality, blurry, jpeg artifacts",
        description="General quality boost",
    ),
}


def tiny_model_entry(data_dir: Path) -> ModelEntry:
    """The built-in model: tiny, random weights, the real diffusers code path."""
    return ModelEntry(
        id=TINY_MODEL_ID,
        source=str(data_dir / "models" / TINY_MODEL_ID),
        family="sd1.x",
        description="Built-in tiny Stable Diffusion with random weights: draws coloured noise, "
        "fast on a CPU, for first runs and tests",
        dtype="float32",
        defaults=ModelDefaults(num_inference_steps=8, guidance_scale=7.5, width=256, height=256, sampler="Euler"),
        limits=ModelLimits(max_width=1024, max_height=1024, max_steps=50),
    )


def load_catalog(path: Path, data_dir: Path) -> Catalog:
    """Read darkroom.toml (which may be absent), add the built-in model and styles, and the models
    pulled at runtime (`state/models.toml`; darkroom.toml wins a name both use)."""
    catalog = parse_catalog(path.read_text() if path.exists() else "", path, data_dir)
    pulled = load_runtime_catalog(data_dir)
    extra = {key: entry for key, item in pulled.models.items()
             if key not in catalog.models and (entry := pulled_entry(key, item, data_dir)) is not None}
    return msgspec.structs.replace(catalog, models={**catalog.models, **extra}) if extra else catalog


def parse_catalog(text: str, path: Path, data_dir: Path) -> Catalog:
    """The catalog from darkroom.toml's text; relative sources are relative to `path`'s folder."""
    try:
        parsed = msgspec.convert(tomllib.loads(text), _CatalogFile)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise CatalogError(f"{path}: {exc}") from exc
    models = {TINY_MODEL_ID: tiny_model_entry(data_dir)}
    for key, entry in parsed.models.items():
        source = entry.source
        # Relative local paths are relative to the catalog file, like most config files; anything
        # else that is not an existing path is a hub repo id ("org/name").
        if source.startswith((".", "/", "~")) or Path(path.parent, source).exists():
            source = str((path.parent / Path(source).expanduser()).resolve())
        config = str((path.parent / entry.config).resolve()) if entry.config else None
        models[key] = msgspec.structs.replace(entry, id=key, source=source, config=config)
    default = parsed.default or TINY_MODEL_ID
    if default not in models:
        raise CatalogError(f"{path}: default model {default!r} is not in [models]")
    llm = parsed.enrichment.llm
    if not 0 <= llm.retries <= 3 or not 0 < llm.timeout_s <= 300:
        raise CatalogError(f"{path}: [enrichment.llm] retries must be 0-3 and timeout_s 0-300 s")
    return Catalog(models=models, default=default, styles={**DEFAULT_STYLES, **parsed.styles},
                   enrichment=parsed.enrichment)
