"""Telegram downloads, replies and unprompted sends (reports), apart from the control flow."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import FSInputFile, Message, ReplyParameters

from bots.core import ChatCore, split_message, utf16_length
from service import formats, redact
from service.messages import msg
from service.sources import NotifyError

log = logging.getLogger(f"tuwen.{__name__}")

SEND_ATTEMPTS = 4
DOWNLOAD_TIMEOUT_SECONDS = 60
MB = 1024 * 1024


async def download_image(
    bot: Bot, message: Message, core: ChatCore, max_file_mb: float, lang: str
) -> bytes | list[str] | None:
    """The message's image bytes; a refusal to reply with; or None when the message carries no image.

    Photos come in several sizes: the largest is taken. Documents are accepted when their type or name is
    one of service/formats.py (PDF, HEIC, TIFF, ...) or any image type: uncompressed scans and PDFs are
    sent that way, and phones often send HEIC as `application/octet-stream` with a `.heic` name. The size
    Telegram reports is checked before anything is downloaded.
    """
    limit = int(max_file_mb * MB)
    if message.photo:
        photo = max(message.photo, key=lambda size: size.width * size.height)
        file_id, size = photo.file_id, photo.file_size
    elif message.document is not None:
        if not formats.upload_acceptable(message.document.mime_type or "", message.document.file_name or ""):
            return core.say(msg("bot_not_image"), lang)
        file_id, size = message.document.file_id, message.document.file_size
    else:
        return None
    if size and size > limit:
        return _too_large(core, size, max_file_mb, lang)
    try:
        file = await bot.get_file(file_id)
        if file.file_size and file.file_size > limit:
            return _too_large(core, file.file_size, max_file_mb, lang)
        if not file.file_path:
            return core.say(msg("bot_download_failed"), lang)
        buffer = await bot.download_file(file.file_path, timeout=DOWNLOAD_TIMEOUT_SECONDS)
    except TelegramBadRequest as exc:
        if "too big" in exc.message.lower():  # Telegram's own refusal of files over 20 MB
            return _too_large(core, size or limit + 1, max_file_mb, lang)
        log.warning("Telegram: getFile refused for chat %s: %s", message.chat.id, exc.message)
        return core.say(msg("bot_download_failed"), lang)
    except (TelegramAPIError, TimeoutError, OSError) as exc:
        log.warning("Telegram: download failed for chat %s: %s", message.chat.id, type(exc).__name__)
        return core.say(msg("bot_download_failed"), lang)
    if buffer is None:
        return core.say(msg("bot_download_failed"), lang)
    data = buffer.read()
    if len(data) > limit:
        return _too_large(core, len(data), max_file_mb, lang)
    return data


def _too_large(core: ChatCore, size: int, max_file_mb: float, lang: str) -> list[str]:
    message = msg("bot_file_too_large", size_mb=f"{size / MB:.1f}", limit_mb=f"{max_file_mb:g}")
    return core.say(message, lang)


async def send_replies(bot: Bot, message: Message, texts: list[str]) -> None:
    """Send each text as a reply to `message`, waiting out flood limits and retrying network errors."""
    thread = message.message_thread_id if message.is_topic_message else None
    for text in texts:
        for attempt in range(SEND_ATTEMPTS):
            try:
                await bot.send_message(
                    chat_id=message.chat.id,
                    text=text,
                    message_thread_id=thread,
                    # The user's message may have been deleted meanwhile; the answer still matters.
                    reply_parameters=ReplyParameters(
                        message_id=message.message_id, allow_sending_without_reply=True
                    ),
                )
                break
            except TelegramRetryAfter as exc:  # 429: Telegram says how long to wait
                await asyncio.sleep(exc.retry_after)
            except (TelegramNetworkError, TelegramServerError) as exc:
                log.warning(
                    "Telegram: sending to chat %s failed (%s); retrying", message.chat.id, exc.message
                )
                await asyncio.sleep(2**attempt)
            except TelegramAPIError as exc:  # blocked by the user, chat gone: nothing to retry
                log.warning("Telegram: cannot reply in chat %s: %s", message.chat.id, exc.message)
                return
        else:
            log.warning("Telegram: gave up replying in chat %s", message.chat.id)
            return


async def send_unprompted(
    bot: Bot, recipient: str, text: str, image: Path | None, document: Path | None, limit: int
) -> None:
    """Send text (split at `limit`), then a photo, then a document to a chat; raises on failure.

    For scheduled reports: nobody asked, so nothing is replied to. Flood limits (429) are waited out here;
    every other error is the caller's to retry or report. `recipient` is a chat id or an @channel name.
    """
    chat_id: int | str = int(recipient) if recipient.lstrip("-").isdigit() else recipient
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda part=part: bot.send_message(chat_id=chat_id, text=part)  # type: ignore[misc]
        for part in (split_message(text, limit, utf16_length) if text else [])
    ]
    if image is not None:
        calls.append(lambda: bot.send_photo(chat_id=chat_id, photo=FSInputFile(image)))
    if document is not None:
        calls.append(lambda: bot.send_document(chat_id=chat_id, document=FSInputFile(document)))
    for call in calls:
        for attempt in range(SEND_ATTEMPTS):
            try:
                await call()
                break
            except TelegramRetryAfter as exc:
                if attempt == SEND_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(exc.retry_after)


def wait_threadsafe(
    loop: asyncio.AbstractEventLoop, sending: Coroutine[Any, Any, None], timeout: float
) -> None:
    """Run `sending` on the bot's loop from another thread and wait; failures become `NotifyError`."""
    try:
        future = asyncio.run_coroutine_threadsafe(sending, loop)
    except RuntimeError as exc:  # the loop closed meanwhile: the bot is stopping
        sending.close()
        raise NotifyError(f"the Telegram bot is stopping ({exc})") from None
    try:
        future.result(timeout)
    except (TelegramBadRequest, TelegramForbiddenError, TelegramNotFound) as exc:
        # Unknown chat, bot blocked or never started by that user: retrying cannot help.
        raise NotifyError(redact.scrub(exc.message), permanent=True) from None
    except TimeoutError:
        future.cancel()
        raise NotifyError(f"no answer from Telegram within {timeout:.0f} s") from None
    except Exception as exc:  # `from None`: a chained aiogram error can carry the token in its URL
        raise NotifyError(redact.scrub(f"{type(exc).__name__}: {exc}")) from None
