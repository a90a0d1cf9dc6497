"""An optional LLM behind prompt enrichment: an OpenAI-compatible chat endpoint asked to rewrite
a prompt in the chosen style. Each attempt has a timeout; failed attempts are retried a bounded
number of times; the caller falls back to the style's template on `LlmFailed`."""

from __future__ import annotations

import asyncio
import os
import re

import httpx
import msgspec
import structlog

from schemas.catalog import LlmConfig, Style
from schemas.settings import Settings

log = structlog.get_logger("enricher")
MAX_PROMPT_CHARS = 2000
RETRY_PAUSE_S = 0.2


class LlmFailed(Exception):
    """Every attempt failed; the message says how the last one did."""

    def __init__(self, reason: str, attempts: int):
        super().__init__(reason)
        self.attempts = attempts


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message


class _Completion(msgspec.Struct):
    choices: list[_Choice]


_completion = msgspec.json.Decoder(_Completion)


def llm_config(settings: Settings, configured: LlmConfig) -> LlmConfig | None:
    """The LLM to use: darkroom.toml's [enrichment.llm], with DARKROOM_ENRICH_LLM_URL/_MODEL
    taking precedence; None (templates only) unless a URL is set."""
    config = msgspec.structs.replace(configured, url=settings.enrich_llm_url or configured.url,
                                     model=settings.enrich_llm_model or configured.model)
    return config if config.url else None


def completions_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


def instructions(style_name: str, style: Style) -> str:
    described = f" ({style.description})" if style.description else ""
    return (
        f"You rewrite prompts for an image generator. Rewrite the user's prompt in the style "
        f"'{style_name}'{described}; the style's own template reads: {style.template}. Keep the "
        f"subject and every detail the user gave. Answer with the rewritten prompt only: one "
        f"line, no quotes, no explanations, at most 75 words."
    )


class LlmRewriter:
    """Rewrites prompts with one configured endpoint over a shared HTTP client."""

    def __init__(self, config: LlmConfig, client: httpx.AsyncClient):
        self.config = config
        self.client = client
        self.url = completions_url(config.url)
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def rewrite(self, prompt: str, style_name: str, style: Style) -> tuple[str, int]:
        """(the rewritten prompt, attempts it took); LlmFailed after the last attempt fails."""
        body = {
            "model": self.config.model,
            "messages": [{"role": "system", "content": instructions(style_name, style)},
                         {"role": "user", "content": prompt}],
            "max_tokens": self.config.max_tokens,
            "temperature": 0.7,
        }
        attempts = 1 + self.config.retries
        reason = ""
        for attempt in range(1, attempts + 1):
            try:
                return await asyncio.wait_for(self._ask(body), self.config.timeout_s), attempt
            except TimeoutError:
                reason = f"timed out after {self.config.timeout_s:g} s"
            except (httpx.HTTPError, msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                reason = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("LLM enrichment attempt failed", attempt=attempt, of=attempts, reason=reason)
            if attempt < attempts:
                await asyncio.sleep(RETRY_PAUSE_S)
        raise LlmFailed(reason, attempts)

    async def _ask(self, body: dict) -> str:
        answer = await self.client.post(self.url, json=body, headers=self.headers)
        if answer.status_code != 200:
            raise ValueError(f"the LLM answered {answer.status_code}: {answer.text[:200]}")
        completion = _completion.decode(answer.content)
        text = completion.choices[0].message.content if completion.choices else None
        cleaned = re.sub(r"\s+", " ", text or "").strip().strip("\"'`").strip()
        if not cleaned:
            raise ValueError("the LLM answered an empty prompt")
        return cleaned[:MAX_PROMPT_CHARS]
