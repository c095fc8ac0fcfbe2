"""`POST /telegram/webhook`: Telegram's updates in webhook mode, checked and handed to the bot's own loop.

Telegram sends the secret given in setWebhook in a header; anything else is refused. The update is answered
at once (Telegram retries slow webhooks) and handled on the bot's loop, where answering may take minutes.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

if TYPE_CHECKING:
    from bots.telegram import TelegramBot

WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def webhook_router(source: TelegramBot) -> APIRouter:
    """The webhook route for one bot."""
    router = APIRouter()

    @router.post(WEBHOOK_PATH, include_in_schema=False)
    async def telegram_webhook(request: Request) -> JSONResponse:
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), source.webhook_secret.encode()):
            return JSONResponse({"ok": False}, status_code=401)
        loop, bot, dispatcher = source.loop, source.bot, source.dispatcher
        if loop is None or bot is None or dispatcher is None or not source.ready.is_set():
            return JSONResponse({"ok": False}, status_code=503)  # Telegram retries later
        try:
            update = await request.json()
        except ValueError:
            return JSONResponse({"ok": False}, status_code=400)
        asyncio.run_coroutine_threadsafe(source.feed(bot, dispatcher, update), loop)
        return JSONResponse({"ok": True})

    return router
