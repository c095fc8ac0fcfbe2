"""The Telegram adapter (aiogram 3): translate updates into `IncomingMessage`s and send the core's replies.

The bot runs in its own thread with its own asyncio event loop, so nothing Telegram does (a slow download,
a network outage, a hung long poll) can block or stop the service's loop. Long polling is the default; with
`mode = "webhook"` the service's HTTP server receives updates on `POST /telegram/webhook` (see
`http_router`) and hands them to this loop.

Failures follow the house rules: a rejected token (getMe 401, or a token that is not even token-shaped)
disables the adapter and says so once, bilingually; network trouble is retried with backoff while the rest
of the service runs, logged once when it starts and once when it ends. The token is never logged: aiogram's
loggers stay at WARNING (at DEBUG they log request URLs, which contain the token) and a filter blanks the
token out of anything they log anyway.

Telegram specifics kept here, not in the core: photos (largest size) and documents in the formats of
`service/formats.py` (PDF, HEIC, TIFF, ...) are accepted up to `max_file_mb` (checked from the size Telegram
reports *before* downloading, as bots cannot fetch files over 20 MB); an album (`media_group_id`) arrives
as separate messages and is collected for `ALBUM_WINDOW_SECONDS` before becoming one question; in groups
only messages that mention the bot or reply to it are answered; answers are replies to the user's message,
split at 4096 UTF-16 code units, with "typing…" kept alive while the model works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import Message, User
from aiogram.utils.backoff import BackoffConfig
from aiogram.utils.token import TokenValidationError
from fastapi import APIRouter

from bots.core import ChatCore, IncomingMessage, utf16_length
from bots.telegram_io import download_image, send_replies, send_unprompted, wait_threadsafe
from bots.telegram_messages import translate, typing_action
from bots.telegram_webhook import WEBHOOK_PATH, webhook_router
from service import redact
from service.config import Config
from service.logs import RedactSecrets
from service.messages import msg
from service.queue import JobQueue
from service.retry import Backoff
from service.sources import NotifyError
from service.supervisor import ComponentStatus, Supervisor

log = logging.getLogger(f"tuwen.{__name__}")

PLATFORM = "telegram"
TEXT_LIMIT = 4096  # Telegram's message limit, in UTF-16 code units
ALBUM_WINDOW_SECONDS = 1.0  # an album's parts arrive as separate updates within about a second
STOP_TIMEOUT_SECONDS = 5.0
NOTIFY_TIMEOUT_SECONDS = 120.0  # a report's HTML page with its thumbnails can take a while to upload
AIOGRAM_LOGGERS = ("aiogram", "aiogram.dispatcher", "aiogram.event", "aiogram.middlewares", "aiogram.webhook")
# aiogram retries a failed getUpdates forever; this only spaces the retries out (and its log lines).
POLL_BACKOFF = BackoffConfig(min_delay=1.0, max_delay=60.0, factor=2.0, jitter=0.1)


@dataclass
class _Album:
    """The parts of one album seen so far."""

    parts: list[tuple[Message, IncomingMessage]] = field(default_factory=list)
    touched: float = 0.0


class TelegramBot:
    """A `Source`: a Telegram bot answering questions about photos through the shared `ChatCore`."""

    name = PLATFORM
    platform = PLATFORM  # a `service.sources.Notifier`: scheduled reports are sent through `notify`
    attachments = frozenset({"image", "document"})

    def __init__(
        self, config: Config, queue: JobQueue, *, album_window: float = ALBUM_WINDOW_SECONDS
    ) -> None:
        self.config = config
        self.settings = config.telegram
        self.core = ChatCore(
            PLATFORM, self.settings, queue, config, max_message_chars=TEXT_LIMIT, length=utf16_length
        )
        self.album_window = album_window
        self.disabled = False
        self.problem: str | None = None  # why it is disabled or unavailable, for /health
        self.supervisor = Supervisor(
            "telegram",
            self._supervised,
            backoff=Backoff(base=2.0, cap=120.0),
            max_restarts=10,
            window_seconds=600.0,
        )
        self.ready = threading.Event()  # set once the bot is connected and receiving updates
        self._token = self.settings.token.get_secret_value().strip()
        # Without a configured secret, a random one per run still keeps strangers from posting fake
        # updates: we hand it to Telegram ourselves in setWebhook.
        self._webhook_secret = self.settings.webhook_secret.get_secret_value() or secrets.token_urlsafe(32)
        # The token is in every URL aiogram logs: one redactor for the whole process scrubs it everywhere.
        redact.register([self._token])
        self._log_filter = RedactSecrets()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._crash: Exception | None = None
        self._bot: Bot | None = None
        self._dispatcher: Dispatcher | None = None
        self._me: User | None = None
        self._albums: dict[tuple[int, str], _Album] = {}
        self.http_router = self._build_router() if self.settings.mode == "webhook" else None

    # -- Source ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the bot's thread and event loop; returns at once."""
        for name in AIOGRAM_LOGGERS:
            logger = logging.getLogger(name)
            logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
            logger.addFilter(self._log_filter)
        if not self._token:
            self._disable("no token configured ([telegram] token or TUWEN_TELEGRAM__TOKEN)", auth=False)
            return
        if self.settings.mode == "webhook" and not self.settings.webhook_url.startswith("https://"):
            # An empty URL in setWebhook would silently *remove* the webhook; Telegram insists on https.
            self._disable("webhook mode needs [telegram] webhook_url, an https:// URL", auth=False)
            return
        self.supervisor.start()

    def stop(self) -> None:
        """Stop polling, cancel handlers still waiting (their jobs stay recorded) and close the session."""
        self.supervisor.stop_event.set()
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may have closed meanwhile
                loop.call_soon_threadsafe(stopping.set)
        if self.supervisor.alive and not self.supervisor.stop(STOP_TIMEOUT_SECONDS):
            log.warning("the Telegram bot did not stop within %.0f s", STOP_TIMEOUT_SECONDS)
        for name in AIOGRAM_LOGGERS:
            logging.getLogger(name).removeFilter(self._log_filter)
        self.ready.clear()

    def status(self) -> ComponentStatus:
        """The bot's state for `/health` and `/metrics`."""
        s = self.supervisor
        if self.disabled:
            return ComponentStatus(self.name, PLATFORM, "disabled", s.restarts, self.problem, s.since)
        state = s.state
        if state in ("starting", "running") and self.problem:
            state = "unavailable"
        elif state == "starting" and self.ready.is_set():
            state = "running"
        return ComponentStatus(self.name, PLATFORM, state, s.restarts, self.problem or s.error, s.since)

    def notify(
        self, recipient: str, text: str, *, image: Path | None = None, document: Path | None = None
    ) -> None:
        """Send a report to chat `recipient` on the bot's own loop; blocks; raises `NotifyError`."""
        loop, bot = self._loop, self._bot
        if self.disabled or loop is None or bot is None or not self.ready.is_set():
            raise NotifyError("the Telegram bot is not connected", permanent=self.disabled)
        sending = send_unprompted(bot, recipient, text, image, document, TEXT_LIMIT)
        wait_threadsafe(loop, sending, NOTIFY_TIMEOUT_SECONDS)

    # -- the bot's own loop ----------------------------------------------------------------------

    def _supervised(self, stop: threading.Event) -> None:
        """One life of the bot's event loop; an exception here is a crash the supervisor restarts."""
        loop = asyncio.new_event_loop()
        self._loop, self._stopping, self._crash = loop, None, None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main(stop))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self.ready.clear()
        if self._crash is not None and not stop.is_set() and not self.disabled:
            raise self._crash  # polling died: restart with backoff instead of going silent

    async def _main(self, stop: threading.Event) -> None:
        self._stopping = asyncio.Event()
        if stop.is_set():  # stop() ran before this loop had its event
            return
        try:
            api = TelegramAPIServer.from_base(self.settings.api_base)
            bot = Bot(self._token, session=AiohttpSession(api=api))
        except TokenValidationError:
            self._disable("the token is not shaped like a Telegram bot token")
            return
        dispatcher = Dispatcher()
        dispatcher.message.register(self._on_message)
        self._bot, self._dispatcher = bot, dispatcher
        runner = asyncio.create_task(self._run(bot, dispatcher))
        stopper = asyncio.create_task(self._until_stopped(stop))
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if runner.done() and not runner.cancelled() and runner.exception() is not None:
            failure = runner.exception()
            log.error("the Telegram bot failed: %s", redact.scrub(repr(failure)))
            self._crash = RuntimeError(redact.scrub(f"{type(failure).__name__}: {failure}"))
        with contextlib.suppress(RuntimeError, TimeoutError):  # RuntimeError: polling had not started
            await asyncio.wait_for(dispatcher.stop_polling(), STOP_TIMEOUT_SECONDS / 2)
        # Whatever is left (the connect loop, handlers waiting for answers, album timers) is cancelled: the
        # jobs stay in the queue and are answered and recorded; only the chat reply is lost.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.wait(others, timeout=STOP_TIMEOUT_SECONDS / 2) if others else None
        await bot.session.close()

    async def _until_stopped(self, stop: threading.Event) -> None:
        """Until `stop()`: its asyncio event, or the supervisor's threading event (set before the loop)."""
        assert self._stopping is not None
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.5)
                return
        self._stopping.set()

    async def _run(self, bot: Bot, dispatcher: Dispatcher) -> None:
        me = await self._connect(bot, dispatcher)
        if me is None:
            return
        self._me = me
        self.ready.set()
        if self.settings.mode == "webhook":
            log.info("Telegram bot @%s receives updates at %s", me.username, WEBHOOK_PATH)
            assert self._stopping is not None
            await self._stopping.wait()  # updates arrive through `http_router` until the stop
            return
        log.info("Telegram bot @%s is polling for messages", me.username)
        await dispatcher.start_polling(
            bot,
            handle_signals=False,
            close_bot_session=False,
            polling_timeout=30,
            backoff_config=POLL_BACKOFF,
        )

    async def _connect(self, bot: Bot, dispatcher: Dispatcher) -> User | None:
        """getMe and (un)set the webhook, retrying network trouble; None when the token is refused."""
        backoff, warned = Backoff(base=1.0, cap=60.0), False
        while True:
            try:
                me = await bot.me()  # cached: start_polling asks again, outside any retry
                if self.settings.mode == "webhook":
                    await bot.set_webhook(
                        url=self.settings.webhook_url,
                        secret_token=self._webhook_secret,
                        allowed_updates=dispatcher.resolve_used_update_types(),
                    )
                else:
                    # A webhook left from an earlier run would make every getUpdates fail with 409.
                    await bot.delete_webhook(drop_pending_updates=False)
            except (TelegramUnauthorizedError, TelegramNotFound) as exc:
                self._disable(redact.scrub(f"{type(exc).__name__}: {exc.message}"))
                return None
            except (
                TelegramNetworkError,
                TelegramServerError,
                TelegramRetryAfter,
                TimeoutError,
                OSError,
            ) as exc:
                if not warned:
                    reason = redact.scrub(f"{type(exc).__name__}: {exc}")
                    self.problem = str(msg("bot_unavailable", platform="Telegram", reason=reason))
                    log.warning("%s", self.problem)
                    warned = True
                await asyncio.sleep(backoff.next_delay())
                continue
            except TelegramAPIError as exc:  # e.g. setWebhook refusing a non-https URL: a config problem
                self._disable(redact.scrub(f"{type(exc).__name__}: {exc.message}"))
                return None
            if warned:
                log.info("%s", msg("bot_recovered", platform="Telegram"))
            self.problem = None
            return me

    def _disable(self, reason: str, *, auth: bool = True) -> None:
        self.disabled = True
        self.problem = str(
            msg("bot_auth_failed" if auth else "bot_disabled", platform="Telegram", reason=reason)
        )
        log.error("%s", self.problem)

    # -- messages --------------------------------------------------------------------------------

    async def _on_message(self, message: Message, bot: Bot) -> None:
        """aiogram's handler for every message update (each runs as its own task)."""
        try:
            await self._handle(message, bot)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must cost one reply, never the bot
            log.exception(
                "Telegram: handling message %s in chat %s failed", message.message_id, message.chat.id
            )
            with contextlib.suppress(Exception):
                incoming = translate(message, self._me)
                reply = self.core.say(msg("unexpected", reason="see the service log"), incoming.lang)
                await send_replies(bot, message, reply)

    async def _handle(self, message: Message, bot: Bot) -> None:
        user = message.from_user
        if user is None or user.is_bot:
            return
        incoming = translate(message, self._me)
        if message.media_group_id:
            await self._album_part(message, incoming, bot)
            return
        refusal = self.core.gate(incoming)
        if refusal is not None:
            await send_replies(bot, message, refusal)
            return
        async with typing_action(bot, message):
            image = await download_image(bot, message, self.core, self.settings.max_file_mb, incoming.lang)
            if isinstance(image, list):  # a refusal (too large, not an image, download failed)
                replies = image
            else:
                replies = await self.core.handle(replace(incoming, images=(image,) if image else ()))
        await send_replies(bot, message, replies)

    async def _album_part(self, message: Message, incoming: IncomingMessage, bot: Bot) -> None:
        """Collect an album's parts; the first part's task waits for the rest and asks once."""
        loop = asyncio.get_running_loop()
        key = (message.chat.id, str(message.media_group_id))
        album = self._albums.get(key)
        first = album is None
        if album is None:
            album = self._albums[key] = _Album()
        album.parts.append((message, incoming))
        album.touched = loop.time()
        if not first:
            return
        while (quiet := loop.time() - album.touched) < self.album_window:
            await asyncio.sleep(self.album_window - quiet)
        del self._albums[key]
        # The caption (and the mention, in a group) is on one part only: judge the album as a whole.
        anchor = next((m for m, i in album.parts if i.text.strip()), album.parts[0][0])
        combined = replace(incoming, addressed=any(i.addressed for _, i in album.parts))
        refusal = self.core.gate(combined)
        if refusal is not None:
            await send_replies(bot, anchor, refusal)
            return
        async with typing_action(bot, anchor):
            images: list[IncomingMessage] = []
            problems: list[str] = []
            for part, part_incoming in album.parts:
                image = await download_image(bot, part, self.core, self.settings.max_file_mb, incoming.lang)
                if isinstance(image, list):
                    problems += [text for text in image if text not in problems]
                elif image is not None:
                    images.append(replace(part_incoming, images=(image,), addressed=True))
            replies = await self.core.handle_album(images) if images else []
        await send_replies(bot, anchor, problems + replies)

    # -- webhook ---------------------------------------------------------------------------------

    def _build_router(self) -> APIRouter:
        return webhook_router(self)

    @property
    def webhook_secret(self) -> str:
        """What Telegram must send in the webhook's secret header."""
        return self._webhook_secret

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The bot's own event loop (while running)."""
        return self._loop

    @property
    def bot(self) -> Bot | None:
        """The aiogram Bot (while running)."""
        return self._bot

    @property
    def dispatcher(self) -> Dispatcher | None:
        """The aiogram Dispatcher (while running)."""
        return self._dispatcher

    async def feed(self, bot: Bot, dispatcher: Dispatcher, update: dict[str, Any]) -> None:
        """Handle one webhook update on the bot's loop (`bots.telegram_webhook`)."""
        try:
            await dispatcher.feed_raw_update(bot, update)
        except Exception:
            log.exception("Telegram: a webhook update could not be handled")
