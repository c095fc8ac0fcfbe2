"""Placeholder until this router is written (see service/http/app.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.http.context import HttpContext


def build_router(ctx: HttpContext) -> APIRouter:
    """No routes yet."""
    return APIRouter()
