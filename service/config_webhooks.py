"""The `[[webhook]]` tables: where tuwen POSTs job events (done, failed, reviewed), signed with a secret."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from service.config_base import Strict

WebhookEvent = Literal["job.done", "job.failed", "job.reviewed"]
EVENTS: tuple[str, ...] = ("job.done", "job.failed", "job.reviewed")


def _all_events() -> list[WebhookEvent]:
    return ["job.done", "job.failed", "job.reviewed"]


class WebhookConfig(Strict):
    """One receiver of job events."""

    name: str = Field("", max_length=64)
    url: str = Field(min_length=8)
    events: list[WebhookEvent] = Field(default_factory=_all_events, min_length=1)
    secret: SecretStr = Field(min_length=16)
    timeout_seconds: float = Field(10.0, gt=0, le=120)
    max_attempts: int = Field(8, ge=1, le=50)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url

    @property
    def key(self) -> str:
        """The name deliveries record (the URL when no name is given, shortened)."""
        return self.name or self.url[:64]
