"""What every config table shares: strictness (unknown keys are errors) and the small validators."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


def known_timezone(value: str) -> str:
    """`value` if zoneinfo knows it (a validator for every timezone key); ValueError otherwise."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError("is not a known timezone (e.g. Asia/Shanghai, Europe/Berlin, UTC)") from exc
    return value


def _ids_as_text(value: object) -> object:
    # Telegram ids are numbers, WeChat/WeCom ids are strings: compare them all as text.
    return [str(item) for item in value] if isinstance(value, list) else value


class Strict(BaseModel):
    """Base for every table: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
