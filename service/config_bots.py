"""The chat-bot tables of the config: `[telegram]`, `[wechat]`, `[wecom]` (what every bot shares first)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from service.config_base import Strict, _ids_as_text

# A person's question when they send a picture with no words: a chat photo without a caption, an API message
# with only an image.
DEFAULT_QUESTION = "这是什么？请简要描述。"


class BotConfig(Strict):
    """What every chat bot shares: who may use it, how often, and how long a conversation lasts."""

    enabled: bool = False
    allowed_user_ids: list[str] = Field(default_factory=list)
    allowed_chat_ids: list[str] = Field(default_factory=list)
    rate_limit_per_minute: int = Field(6, ge=1, le=1000)
    default_question: str = DEFAULT_QUESTION
    max_turns: int = Field(6, ge=1, le=50)
    conversation_minutes: float = Field(30.0, gt=0)
    answer_timeout_seconds: float = Field(300.0, gt=0)

    _ids = field_validator("allowed_user_ids", "allowed_chat_ids", mode="before")(_ids_as_text)


class TelegramConfig(BotConfig):
    """`[telegram]`: a Telegram bot (aiogram)."""

    token: SecretStr = SecretStr("")
    api_base: str = "https://api.telegram.org"
    mode: Literal["polling", "webhook"] = "polling"
    webhook_url: str = ""
    webhook_secret: SecretStr = SecretStr("")
    max_file_mb: float = Field(20.0, gt=0, le=2000)


class WeChatConfig(BotConfig):
    """`[wechat]`: personal WeChat through a wechaty puppet-service gateway (optional extra)."""

    token: SecretStr = SecretStr("")
    endpoint: str = ""
    reconnect_max_seconds: float = Field(300.0, gt=0)


class WeComConfig(BotConfig):
    """`[wecom]`: a WeCom (企业微信) self-built app; its callback URL is served by tuwen's HTTP server."""

    corp_id: str = ""
    agent_id: int = 0
    secret: SecretStr = SecretStr("")
    token: SecretStr = SecretStr("")
    encoding_aes_key: SecretStr = SecretStr("")
    api_base: str = "https://qyapi.weixin.qq.com"
    callback_path: str = "/wecom/callback"
