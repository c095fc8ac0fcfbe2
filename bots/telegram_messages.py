"""Telegram messages in the shared conversation core's terms: who asks, in which language, and whether the
bot was addressed (in a group it answers only when mentioned or replied to)."""

from __future__ import annotations

import re

from aiogram import Bot
from aiogram.types import Message, User
from aiogram.utils.chat_action import ChatActionSender

from bots.core import IncomingMessage

PLATFORM = "telegram"
GROUP_TYPES = {"group", "supergroup"}


def typing_action(bot: Bot, message: Message) -> ChatActionSender:
    """ "typing…" in the message's chat (and topic) while an answer is being made."""
    thread = message.message_thread_id if message.is_topic_message else None
    return ChatActionSender.typing(bot=bot, chat_id=message.chat.id, message_thread_id=thread)


def translate(message: Message, me: User | None) -> IncomingMessage:
    """The platform-neutral view of a message (without its image, which is fetched only if allowed)."""
    user = message.from_user
    assert user is not None
    is_group = message.chat.type in GROUP_TYPES
    text = message.text or message.caption or ""
    code = (user.language_code or "").lower()
    # Chinese unless the user's Telegram is set to another language: tuwen's users are Chinese first.
    lang = "zh" if not code or code.startswith("zh") else "en"
    return IncomingMessage(
        platform=PLATFORM,
        chat_id=str(message.chat.id),
        user_id=str(user.id),
        text=strip_mention(text, me),
        is_group=is_group,
        addressed=not is_group or addressed(message, text, me),
        lang=lang,
        message_id=str(message.message_id),
    )


def addressed(message: Message, text: str, me: User | None) -> bool:
    """In a group: whether the message mentions the bot or replies to one of its messages."""
    if me is None:
        return False
    replied = message.reply_to_message
    if replied is not None and replied.from_user is not None and replied.from_user.id == me.id:
        return True
    handle = f"@{me.username or ''}".lower()
    for entity in message.entities or message.caption_entities or []:
        if entity.type == "text_mention" and entity.user is not None and entity.user.id == me.id:
            return True
        if entity.type == "mention" and entity.extract_from(text).lower() == handle:
            return True
        if entity.type == "bot_command" and entity.extract_from(text).lower().endswith(handle):
            return True
    return False


def strip_mention(text: str, me: User | None) -> str:
    """The text without the bot's @name ("/help@tuwen_bot" keeps its command)."""
    if me is None or not me.username:
        return text
    pattern = rf"(?<![/\w])@{re.escape(me.username)}\b"
    return re.sub(pattern, "", text, flags=re.IGNORECASE).strip()
