"""A weights.gg client written from the seed's document and its Python library's behaviour, not
from Darkroom's code: GET for everything, `Content-Type: application/json` on every request,
`x-api-key: str(api_key)` (so `None` when the user set no key), a health check before every call,
and progressive generation that polls /status every 100 ms until COMPLETED or FAILED."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx


class WeightsError(Exception):
    pass


class WeightsApi:
    def __init__(self, api_key: str | None = None, endpoint: str = "http://localhost:3000"):
        self.api_key = api_key
        self.endpoint = endpoint
        self.http = httpx.Client(timeout=30)

    def api_call(self, path: str, params: dict[str, Any] | None = None, *, text: bool = False) -> Any:
        headers = {"Content-Type": "application/json", "x-api-key": str(self.api_key)}
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        response = self.http.get(self.endpoint + path, params=query, headers=headers)
        if response.is_error:
            raise WeightsError(f"Weights API Error: {response.status_code} {response.text}")
        return response.text if text else response.json()

    def call_with_health_check(self, call: Callable[[], Any]) -> Any:
        try:
            self.api_call("/health")
        except (WeightsError, httpx.HTTPError, ValueError) as exc:
            raise WeightsError(f"The API is not reachable: {exc}") from exc
        return call()

    def get_status(self, image_id: str) -> dict:
        return self.call_with_health_check(lambda: self.api_call(f"/status/{image_id}"))

    def get_quota(self) -> str:
        return self.call_with_health_check(lambda: self.api_call("/quota", text=True))

    def search_loras(self, query: str) -> list:
        return self.call_with_health_check(lambda: self.api_call("/search-loras", {"query": query}))

    def generate_image(self, prompt: str, lora_name: str | None = None) -> dict:
        return self.call_with_health_check(
            lambda: self.api_call("/generateImage", {"prompt": prompt, "loraName": lora_name}))

    # The older, space-based API.
    def allocate_space(self) -> dict:
        return self.call_with_health_check(lambda: self.api_call("/allocateSpace"))

    def add_lora(self, lora_name: str, space_id: str) -> dict:
        return self.call_with_health_check(lambda: self.api_call("/addLora", {"loraName": lora_name,
                                                                              "spaceId": space_id}))

    def remove_lora(self, space_id: str) -> dict:
        return self.call_with_health_check(lambda: self.api_call("/removeLora", {"spaceId": space_id}))

    def generate_image_job(self, prompt: str, space_id: str) -> dict:
        return self.call_with_health_check(
            lambda: self.api_call("/generateImageJob", {"prompt": prompt, "spaceId": space_id}))

    def generate_progressive_image(self, prompt: str, lora_name: str | None = None,
                                   callback: Callable[[str, dict], None] = lambda status, data: None,
                                   *, started: dict | None = None) -> dict:
        result = started or self.generate_image(prompt, lora_name)
        image_id = result["imageId"]
        old_modified = None
        while True:
            status = self.get_status(image_id)
            if status.get("lastModifiedDate") != old_modified:
                old_modified = status.get("lastModifiedDate")
                callback(status["status"], {"imageId": image_id, **status})
            if status["status"] == "COMPLETED":
                return status
            if status["status"] == "FAILED":
                raise WeightsError("Image generation failed")
            time.sleep(0.1)
