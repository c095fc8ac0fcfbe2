"""Typed, strict configuration: one pydantic model per TOML table, unknown keys rejected.

Values are checked where they are declared (a cron line, a timezone, a report name); loading the file and
turning pydantic's errors into `key.path: value reason` lines is `service.config_load`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator

from service.config_base import Strict, _ids_as_text, known_timezone
from service.config_bots import DEFAULT_QUESTION, BotConfig, TelegramConfig, WeChatConfig, WeComConfig
from service.config_webhooks import WebhookConfig
from service.cron import cron_trigger

# Re-exported: callers import every table from here.
__all__ = [
    "DEFAULT_QUESTION",
    "BotConfig",
    "Strict",
    "TelegramConfig",
    "WeChatConfig",
    "WeComConfig",
    "WebhookConfig",
]

# A watched folder's question when its [[watch]] names none (and `tuwen ask` / `tuwen batch` without one).
DEFAULT_PROMPT = "请用20字以内描述图中场景、人物和时间特征"

# paperless-ngx's lesson: NAS, sync and OS litter must never become jobs. Our own sidecars and temporary
# files are here too so writing a sidecar never triggers a job.
DEFAULT_IGNORE: tuple[str, ...] = (
    ".*",
    "Thumbs.db",
    "desktop.ini",
    "@eaDir",
    "#recycle",
    "__MACOSX",
    ".stfolder",
    ".Trashes",
    "~$*",
    "*.part",
    "*.crdownload",
    "*.tmp",
    "*.json",
    "*.xmp",
    "*.alto.xml",
    "*.tuwen-tmp",
    "*.bak-*",
    "tuwen-catalogue.csv",
)


class OpenAIConfig(Strict):
    """`[openai]`: a remote OpenAI-compatible server (vLLM, SGLang, LMDeploy, Ollama, Zhipu)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    # Several servers serving the same model (one vLLM per GPU): requests go to the one with the fewest in
    # flight; one that fails connections is left out for a while. Empty: `base_url` alone.
    base_urls: list[str] = Field(default_factory=list)
    api_key: SecretStr = SecretStr("")
    model: str = "zai-org/GLM-4.6V-Flash"
    timeout_seconds: float = Field(120.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    # Requests in flight at once, continuously (a new job goes out as each answer arrives); interactive
    # questions have as many again of their own, so they never wait behind the backlog.
    concurrency: int = Field(16, ge=1, le=1024)
    # Extra fields for every request body, for what a server understands beyond OpenAI's API (vLLM's
    # `top_k`, `repetition_penalty`, `guided_json`, …). tuwen's own fields win over these.
    extra_body: dict[str, Any] = Field(default_factory=dict)

    @field_validator("base_url", "base_urls")
    @classmethod
    def _http_urls(cls, value: str | list[str]) -> str | list[str]:
        for url in [value] if isinstance(value, str) else value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return value

    @field_validator("extra_body")
    @classmethod
    def _not_ours(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(set(value) & {"model", "messages", "stream", "stream_options"})
        if reserved:
            raise ValueError(f"{', '.join(reserved)} cannot be set here: tuwen sets them for each request")
        return value

    @property
    def urls(self) -> list[str]:
        """Every server's base URL, without a trailing slash."""
        return [url.rstrip("/") for url in (self.base_urls or [self.base_url])]


class ModelConfig(Strict):
    """`[model]`: which backend answers, and how it generates."""

    backend: Literal["ocr", "transformers", "openai"] = "ocr"
    path: str = "zai-org/GLM-4.6V-Flash"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    quantization: Literal["none", "4bit", "8bit"] = "none"
    max_new_tokens: int = Field(512, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    batch_size: int = Field(4, ge=1, le=64)
    strip_thinking: bool = True
    # GLM-4.6V's reasoning mode (vLLM and SGLang turn it on by default): off for folder captions unless a
    # [[watch]] or an API request asks for it; sent as the chat template's `enable_thinking`.
    thinking: bool = False
    warmup: bool = True
    ocr_step: bool = False
    # A job in hand longer than this is stuck: /health says so, the worker restarts, the job is retried once.
    job_timeout_seconds: float = Field(600.0, gt=0)


class ImagesConfig(Strict):
    """`[images]`: limits that keep one hostile or huge file from hurting the service."""

    max_edge: int = Field(1024, ge=64, le=8192)
    max_file_mb: int = Field(200, ge=1)
    max_pixels: int = Field(180_000_000, ge=1_000_000)
    max_pages: int = Field(50, ge=1)


class OcrConfig(Strict):
    """`[ocr]`: the embedded reader (the `ocr` backend and `[model] ocr_step`)."""

    # Lines read with less confidence than this mark the page `needs_review` (sidecar, history, review
    # page). 0.95 caught 37 of 39 misread lines on the benchmark corpus; see service/backends/ocr_page.py.
    review_confidence: float = Field(0.95, ge=0.0, le=1.0)


class StorageConfig(Strict):
    """`[storage]`: where the database, uploads and reports live."""

    data_dir: Path = Path("data")
    # Photos visitors and staff send (kiosk, web, API, chats) are deleted after this many days, thumbnails
    # too; the history's text stays. 0 keeps them.
    keep_uploads_days: float = Field(30.0, ge=0)
    # Empty: the SQLite file under data_dir. `postgresql+psycopg://user:password@host/db`: a PostgreSQL
    # database several `tuwen serve` nodes share (one queue, one history; docs/scale-out.md).
    database_url: SecretStr = SecretStr("")

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: SecretStr) -> SecretStr:
        from db.engine import UnsupportedDatabase, database_url
        from service.messages import msg

        text = value.get_secret_value().strip()
        if text and "://" not in text:
            raise ValueError(str(msg("config_database_url", reason="not a URL")))
        try:
            if text:
                database_url(text)
        except UnsupportedDatabase as exc:
            raise ValueError(str(msg("config_database_url", reason=exc))) from None
        return SecretStr(text)


class HttpConfig(Strict):
    """`[http]`: the built-in web server: OpenAI-compatible API, web UI, kiosk, feed, /health, /metrics."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    api_key: SecretStr = SecretStr("")
    session_hours: float = Field(12.0, gt=0, le=24 * 366)
    max_queue: int = Field(15, ge=1, le=10000)
    max_body_mb: float = Field(10.0, gt=0, le=1024)
    request_timeout_seconds: float = Field(300.0, gt=0)
    allow_image_urls: bool = False
    image_url_timeout_seconds: float = Field(10.0, gt=0, le=120)
    model_name: str = "tuwen"
    # Hostile or slow clients: connections, images and time a request may take before it is refused.
    max_connections: int = Field(256, ge=4, le=100_000)
    header_timeout_seconds: float = Field(10.0, gt=0, le=600)
    body_timeout_seconds: float = Field(60.0, gt=0, le=3600)
    keep_alive_seconds: float = Field(5.0, ge=1, le=600)
    max_images_per_request: int = Field(8, ge=1, le=100)
    max_pixels_per_request: int = Field(200_000_000, ge=1_000_000)
    # Browser origins allowed to call the API from other sites (CORS); empty = none.
    cors_origins: list[str] = Field(default_factory=list)
    # The institution's clock: CSV export times and the Reports tab's "yesterday" are in this zone.
    timezone: str = "Asia/Shanghai"

    _timezone = field_validator("timezone")(known_timezone)


class KioskConfig(Strict):
    """`[kiosk]`: the museum tablet page at /kiosk."""

    title: str = "拍一拍，问一问"
    presets: list[str] = Field(
        default_factory=lambda: ["这是什么？", "它是什么年代的？", "请用简单的话给孩子讲讲它"]
    )
    # What a visitor who switches to English sees instead (empty: the Chinese ones stay).
    title_en: str = "Snap it, ask it"
    presets_en: list[str] = Field(
        default_factory=lambda: ["What is this?", "How old is it?", "Explain it simply, for a child"]
    )
    idle_seconds: float = Field(90.0, ge=5)
    max_turns: int = Field(6, ge=1, le=50)


class FeedConfig(Strict):
    """`[feed]`: the live display page at /feed."""

    title: str = "最新解读"
    # Private by default: nothing appears on a hall screen until it is named here. `watches` names the
    # folders whose scans may be shown; `sources` the other sources (kiosk, web, api, chats) that may.
    sources: list[str] = Field(default_factory=list)
    watches: list[str] = Field(default_factory=list)
    limit: int = Field(12, ge=1, le=200)


class QueueConfig(Strict):
    """`[queue]`: retries for transient failures."""

    max_attempts: int = Field(5, ge=1, le=100)
    retry_base_seconds: float = Field(2.0, gt=0)
    retry_max_seconds: float = Field(300.0, gt=0)


def _host_name() -> str:
    import socket

    return socket.gethostname() or "tuwen"


class NodeConfig(Strict):
    """`[node]`: this `tuwen serve` among others sharing one database."""

    name: str = Field(default_factory=_host_name, min_length=1, max_length=128)
    # A node writes its heartbeat this often; one silent for `lease_seconds` is taken for dead.
    heartbeat_seconds: float = Field(10.0, gt=0, le=3600)
    lease_seconds: float = Field(60.0, gt=0, le=86400)


class LoggingConfig(Strict):
    """`[logging]`."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


ReportOutput = Literal["markdown", "html", "csv", "png"]
REPORT_OUTPUTS: tuple[ReportOutput, ...] = ("markdown", "html", "csv", "png")


class ReportConfig(Strict):
    """One `[[report]]`: a summary of what the service did, on a timetable, to disk and to chats."""

    name: str
    schedule: str = "0 18 * * *"
    timezone: str = "Asia/Shanghai"
    period: Literal["day", "week", "month"] = "day"
    sources: list[str] = Field(default_factory=list)
    watches: list[str] = Field(default_factory=list)
    outputs: list[ReportOutput] = Field(default_factory=lambda: list(REPORT_OUTPUTS))
    telegram_chat_ids: list[str] = Field(default_factory=list)
    wecom_users: list[str] = Field(default_factory=list)
    wechat_contacts: list[str] = Field(default_factory=list)
    folder: Path | None = None
    base_url: str = ""
    grace_minutes: float = Field(720.0, ge=0)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        # The name becomes a folder under data_dir/reports: no separators, no dot-dot, nothing hidden.
        forbidden = '/\\:*?"<>|'
        hidden_or_padded = value.startswith(".") or value != value.strip()
        if not value or hidden_or_padded or any(ch in value for ch in forbidden):
            raise ValueError("must be a plain folder name (letters, digits, Chinese, - or _)")
        return value

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        try:
            cron_trigger(value, "UTC")
        except ValueError as exc:
            raise ValueError(f"is not a valid cron schedule (minute hour day month weekday): {exc}") from exc
        return value

    _timezone = field_validator("timezone")(known_timezone)

    _ids = field_validator("telegram_chat_ids", "wecom_users", "wechat_contacts", mode="before")(_ids_as_text)


class WatchConfig(Strict):
    """One `[[watch]]` folder: its own prompt, patterns and output place."""

    path: Path
    name: str = ""
    prompt: str = DEFAULT_PROMPT
    recursive: bool = True
    include: list[str] = Field(default_factory=lambda: ["*"])
    ignore: list[str] = Field(default_factory=list)
    stable_seconds: float = Field(5.0, ge=0)
    polling: bool = False
    poll_interval_seconds: float = Field(5.0, gt=0)
    rescan_seconds: float = Field(300.0, gt=0)
    output_dir: Path | None = None
    catalogue: bool = False
    tags: list[str] = Field(default_factory=list)
    # Symbolic links to files outside the folder are not followed unless asked: a link to /etc or to
    # another department's share should not become a job.
    follow_links: bool = False
    # The model's reasoning mode for this folder; unset: `[model] thinking`.
    thinking: bool | None = None
    # ALTO XML (`NAME.EXT.alto.xml`) beside the JSON and XMP sidecars: what METS/ALTO workflows,
    # Transkribus and eScriptorium import. Only jobs that carry OCR lines have one.
    alto: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be empty")
        return value

    @property
    def key(self) -> str:
        """The name recorded with every job of this watch (the folder path when no name is given)."""
        return self.name or str(self.path)

    @property
    def all_ignores(self) -> tuple[str, ...]:
        """Default ignores plus the user's."""
        return DEFAULT_IGNORE + tuple(self.ignore)


class Config(Strict):
    """The whole `config.toml`."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    ocr: OcrConfig = Field(default_factory=OcrConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    node: NodeConfig = Field(default_factory=NodeConfig)
    kiosk: KioskConfig = Field(default_factory=KioskConfig)
    feed: FeedConfig = Field(default_factory=FeedConfig)
    telegram: TelegramConfig = Field(default_factory=TelegramConfig)
    wechat: WeChatConfig = Field(default_factory=WeChatConfig)
    wecom: WeComConfig = Field(default_factory=WeComConfig)
    watch: list[WatchConfig] = Field(default_factory=list)
    report: list[ReportConfig] = Field(default_factory=list)
    webhook: list[WebhookConfig] = Field(default_factory=list)

    @field_validator("watch")
    @classmethod
    def _unique_watch_names(cls, watches: list[WatchConfig]) -> list[WatchConfig]:
        _refuse_duplicates("watches", [w.key for w in watches])
        return watches

    @field_validator("report")
    @classmethod
    def _unique_report_names(cls, reports: list[ReportConfig]) -> list[ReportConfig]:
        _refuse_duplicates("reports", [r.name for r in reports])
        return reports

    @property
    def db_path(self) -> Path:
        """The SQLite database file (when `[storage] database_url` is empty)."""
        return self.storage.data_dir / "tuwen.sqlite3"

    @property
    def db_target(self) -> Path | str:
        """What the store opens: the SQLite file, or `[storage] database_url` when set."""
        return self.storage.database_url.get_secret_value() or self.db_path


def _refuse_duplicates(what: str, names: list[str]) -> None:
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two {what} share the name {duplicates[0]!r}; give each a distinct name")
