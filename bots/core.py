"""The conversation core every chat bot shares: what a message means, who may ask, and what to reply.

An adapter (Telegram, WeCom, WeChat) only translates: it turns a platform message into an
`IncomingMessage` (raw image bytes already downloaded), calls `ChatCore.handle`, and sends back the texts it
returns, each already short enough for the platform. Everything else lives here, once:

- a photo asks its caption, or `default_question` when it has none; several photos sent together are one
  question about all of them (`handle_album`);
- a text after a photo is a follow-up about that photo: the conversation (per platform, chat and user) keeps
  its images and turns, allows `max_turns` follow-ups and expires after `conversation_minutes` idle;
- `/new` or 「新对话」 starts over; `/start` and `/help` explain; text with no photo yet asks for one;
- allow-lists and a per-user sliding-window rate limit, with a reply saying why;
- every failure (bad image, queue full, model down, timeout, model error) gets a plain reply in the user's
  language: a bot that goes silent looks broken.

In a group the core stays silent unless the bot was addressed, *before* any access check: a bot that
answered every group message with "you may not use me" would be worse than useless.

Images are not decoded here: they are stored and queued, and the worker fails a bad one with a catalogue
message that becomes the reply. That keeps one decoding path (the worker's) and one record of every attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from bots.split import split_message, utf16_length
from service.config import BotConfig, Config
from service.errors import StorageUnavailable
from service.events import ChatTurn, Event, Priority, Source
from service.jobs import Job, JobStatus
from service.logs import job_context
from service.messages import Message, msg, render
from service.queue import JobQueue, QueueFull, WorkerUnavailable
from service.uploads import store_upload

__all__ = ["ChatCore", "IncomingMessage", "split_message", "utf16_length"]

log = logging.getLogger(f"tuwen.{__name__}")

Lang = Literal["zh", "en"]
NEW_CONVERSATION_WORDS = {"/new", "新对话", "新對話"}
HELP_COMMANDS = {"/start", "/help"}
# How often a waiting question checks that the model worker is still there.
WAIT_TICK_SECONDS = 1.0
RATE_WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class IncomingMessage:
    """One message as an adapter received it, already translated out of the platform's shapes."""

    platform: str  # "telegram" | "wechat" | "wecom"  (also the job's source label)
    chat_id: str
    user_id: str
    text: str = ""  # caption or message text
    images: tuple[bytes, ...] = ()  # raw image bytes as downloaded
    is_group: bool = False
    addressed: bool = True  # in a group: the bot was mentioned or replied to
    lang: str = "zh"  # "zh" | "en"
    message_id: str = ""


@dataclass
class _Conversation:
    """One user's conversation about one set of photos."""

    conversation_id: str
    images: tuple[str, ...]
    turns: list[ChatTurn] = field(default_factory=list)
    last_active: float = field(default_factory=time.monotonic)

    @property
    def follow_ups(self) -> int:
        """Questions asked after the first answered one."""
        return max(0, len(self.turns) // 2 - 1)


class ChatCore:
    """Turns incoming chat messages into jobs and finished jobs into reply texts."""

    def __init__(
        self,
        platform: str,
        bot: BotConfig,
        queue: JobQueue,
        config: Config,
        *,
        max_message_chars: int,
        length: Callable[[str], int] = len,
    ) -> None:
        self.platform = platform
        self.bot = bot
        self.queue = queue
        self.config = config
        self.max_message_chars = max_message_chars
        self.length = length
        self._conversations: dict[tuple[str, str], _Conversation] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._asked: dict[str, deque[float]] = {}
        # Conversation numbers start from the clock so ids stay unique across restarts of the service.
        self._next_number = int(time.time())

    # -- entry points ----------------------------------------------------------------------------

    def gate(self, message: IncomingMessage) -> list[str] | None:
        """None when the message may be handled; else what to reply instead ([] = stay silent).

        Adapters call this before downloading anything, so a stranger's files are never fetched.
        """
        if message.is_group and not message.addressed:
            return []
        if not self._allowed(message):
            log.info(
                "%s: refused user %s in chat %s (allow-list)", self.platform, message.user_id, message.chat_id
            )
            return self.say(
                msg("bot_not_allowed", user_id=message.user_id, chat_id=message.chat_id), message.lang
            )
        return None

    def say(self, message: Message, lang: str) -> list[str]:
        """A catalogue message in the user's language, split to the platform's limit."""
        return split_message(message.en if lang == "en" else message.zh, self.max_message_chars, self.length)

    async def handle(self, message: IncomingMessage) -> list[str]:
        """Answer one message; the reply texts in order, each within `max_message_chars` ([] = silence)."""
        refusal = self.gate(message)
        if refusal is not None:
            return refusal
        lang: Lang = "en" if message.lang == "en" else "zh"
        key = (message.chat_id, message.user_id)
        word = _command(message.text)
        if not message.images and word in HELP_COMMANDS:
            return self.say(msg("bot_help"), lang)
        if not message.images and word in NEW_CONVERSATION_WORDS:
            self._conversations.pop(key, None)
            return self.say(msg("bot_new"), lang)
        if not message.images and word.startswith("/"):
            return self.say(msg("bot_help"), lang)  # an unknown command: say what the bot can do
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # one question at a time per user keeps the turns of a conversation in order
            return await self._ask(message, key, lang)

    async def handle_album(self, messages: Sequence[IncomingMessage]) -> list[str]:
        """Several photos sent together: one question (the first caption found) about all of them."""
        if not messages:
            return []
        first = messages[0]
        text = next((m.text for m in messages if m.text.strip()), "")
        combined = IncomingMessage(
            platform=first.platform,
            chat_id=first.chat_id,
            user_id=first.user_id,
            text=text,
            images=tuple(image for m in messages for image in m.images),
            is_group=first.is_group,
            addressed=any(m.addressed for m in messages),
            lang=first.lang,
            message_id=next((m.message_id for m in messages if m.text.strip()), first.message_id),
        )
        return await self.handle(combined)

    # -- asking ----------------------------------------------------------------------------------

    async def _ask(self, message: IncomingMessage, key: tuple[str, str], lang: Lang) -> list[str]:
        now = time.monotonic()
        self._expire(now)
        conversation = self._conversations.get(key)
        if message.images:
            question = message.text.strip() or self.bot.default_question
        elif conversation is None:
            return self.say(msg("bot_need_photo"), lang)
        elif conversation.follow_ups >= self.bot.max_turns:
            return self.say(msg("bot_max_turns", n=self.bot.max_turns), lang)
        else:
            question = message.text.strip()
            if not question:
                return self.say(msg("bot_need_photo"), lang)
        refusal = self._rate_limited(message.user_id, now)
        if refusal is not None:
            return self.say(refusal, lang)
        try:
            # The queue's one admission rule (shared with the API): model down, or too many waiting.
            with self.queue.admit(self.config.http.max_queue):
                if message.images:
                    paths = await asyncio.to_thread(self._store_images, message.images)
                    conversation = _Conversation(self._new_conversation_id(message), paths)
                    self._conversations[key] = conversation
                assert conversation is not None
                conversation.last_active = now
                submitted = await self._submit(message, conversation, question)
        except QueueFull:
            return self.say(msg("bot_busy"), lang)
        except WorkerUnavailable:
            return self.say(msg("bot_model_down"), lang)
        except StorageUnavailable:
            return self.say(msg("bot_storage_down"), lang)
        job = submitted if isinstance(submitted, Message) else await self._wait(submitted)
        if isinstance(job, Message):
            return self.say(job, lang)
        if job.status != JobStatus.DONE:
            if (job.error_code or "").startswith("image_"):
                self._conversations.pop(key, None)  # the photo itself is the problem: follow-ups cannot help
            # The stored code and parameters, rendered in the user's language (not the stored bilingual text).
            reason = render(job.error_code, job.error_params, job.error).text(lang)
            return self.say(msg("bot_failed", reason=reason), lang)
        answer = (job.answer or "").strip()
        conversation.turns += [ChatTurn("user", question), ChatTurn("assistant", job.answer or "")]
        conversation.last_active = time.monotonic()
        if not answer:
            return self.say(msg("bot_empty_answer"), lang)
        return split_message(answer, self.max_message_chars, self.length)

    async def _submit(
        self, message: IncomingMessage, conversation: _Conversation, question: str
    ) -> Job | Message:
        """Queue the question; a catalogue message when the queue is shutting down."""
        event = Event(
            source=Source(self.platform),
            source_ref=message.chat_id,
            question=question,
            images=conversation.images,
            history=tuple(conversation.turns),
            conversation_id=conversation.conversation_id,
            priority=Priority.INTERACTIVE,
            reply_to=message.message_id or None,
            user_id=message.user_id,
        )
        try:
            return await asyncio.to_thread(self.queue.submit, event)
        except RuntimeError:  # the queue is shutting down
            return msg("bot_model_down")

    async def _wait(self, job: Job) -> Job | Message:
        """The finished job; a catalogue message when it cannot be had (model gone, timeout)."""
        timeout = self.bot.answer_timeout_seconds
        try:
            return await self.queue.wait(job.uid, timeout, tick=WAIT_TICK_SECONDS)
        except WorkerUnavailable:
            with job_context(job.uid):
                log.warning("the model worker went away while a %s user waited", self.platform)
            return msg("bot_model_down")
        except TimeoutError:
            with job_context(job.uid):
                log.warning("no answer within %g s for a %s user; it stays queued", timeout, self.platform)
            return msg("bot_timeout", seconds=f"{timeout:g}")

    def _rate_limited(self, user_id: str, now: float) -> Message | None:
        """The per-user rate limit: why to refuse this question, if it must be."""
        if not self.queue.accepting or not self.queue.worker_available():
            return msg("bot_model_down")  # said before counting the question against the user
        asked = self._asked.setdefault(user_id, deque())
        while asked and now - asked[0] >= RATE_WINDOW_SECONDS:
            asked.popleft()
        limit = self.bot.rate_limit_per_minute
        if len(asked) >= limit:
            seconds = max(1, int(RATE_WINDOW_SECONDS - (now - asked[0])) + 1)
            return msg("bot_rate_limited", limit=limit, seconds=seconds)
        asked.append(now)
        return None

    def _allowed(self, message: IncomingMessage) -> bool:
        users, chats = self.bot.allowed_user_ids, self.bot.allowed_chat_ids
        return (not users or message.user_id in users) and (not chats or message.chat_id in chats)

    def _store_images(self, images: tuple[bytes, ...]) -> tuple[str, ...]:
        data_dir = self.config.storage.data_dir
        return tuple(str(store_upload(data_dir, data).path) for data in images)

    def _new_conversation_id(self, message: IncomingMessage) -> str:
        number, self._next_number = self._next_number, self._next_number + 1
        return f"{self.platform}:{message.chat_id}:{message.user_id}:{number}"

    def _expire(self, now: float) -> None:
        # Idle conversations are dropped here rather than by a timer: no task to start or stop.
        idle = self.bot.conversation_minutes * 60
        for key in [k for k, c in self._conversations.items() if now - c.last_active > idle]:
            del self._conversations[key]
        for key in [
            k for k, lock in self._locks.items() if k not in self._conversations and not lock.locked()
        ]:
            del self._locks[key]
        for user in [
            u for u, asked in self._asked.items() if not asked or now - asked[-1] > RATE_WINDOW_SECONDS
        ]:
            del self._asked[user]


def _command(text: str) -> str:
    """The first word, lower-cased, without a `@botname` suffix (`/help@tuwen_bot` → `/help`)."""
    words = text.strip().split()
    if not words:
        return ""
    return words[0].split("@", 1)[0].lower() if words[0].startswith("/") else text.strip()
