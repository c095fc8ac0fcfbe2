"""Delivering a written report to chats: the short Chinese summary, the chart and the HTML page.

The chat bots are `Notifier`s (see `service.sources`): the App collects them by platform into
`App.notifiers`, so this module sends through whatever bots are running without importing any of them.
Each part of a delivery (text, chart, HTML) is sent and retried on its own, so a flaky network that drops
the chart never makes a recipient read the summary twice. Failures are logged and returned, never raised:
the report's files are already on disk when delivery starts, and a chat being down must not undo that.

Platforms: Telegram takes all three parts; WeCom the text, the chart as an image and the HTML as a file
(each uploaded with media/upload first); WeChat only text (its bridge sends no files). What a notifier
cannot send is skipped with a note in the result, not an error.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from service.config import ReportConfig
from service.messages import msg
from service.retry import Backoff
from service.sources import Notifier, NotifyError

log = logging.getLogger(f"tuwen.{__name__}")

DEFAULT_ATTEMPTS = 4
DEFAULT_BACKOFF_SECONDS = 5.0  # then 15 s, 45 s: outlasts a short outage without holding a run for long
BACKOFF_FACTOR = 3.0
MAX_BACKOFF_SECONDS = 300.0
PLATFORM_NAMES = {"telegram": "Telegram", "wecom": "企业微信 WeCom", "wechat": "微信 WeChat"}


class ReportFilesLike(Protocol):
    """What delivery reads of `service.reports.render.ReportFiles`."""

    @property
    def png(self) -> Path | None: ...

    @property
    def html(self) -> Path | None: ...

    @property
    def summary_zh(self) -> str: ...


@dataclass
class DeliveryResult:
    """How one recipient fared: status 'sent', 'partial' (text arrived, an attachment did not) or 'failed'."""

    platform: str
    recipient: str
    status: str
    sent: list[str] = field(default_factory=list)  # the parts that arrived: "text", "image", "document"
    skipped: list[str] = field(default_factory=list)  # parts this platform cannot send
    attempts: int = 0
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for the schedule's state file."""
        return asdict(self)


def recipients(report: ReportConfig) -> list[tuple[str, str]]:
    """(platform, recipient) for every chat target of `report`, in config order."""
    targets = [("telegram", r) for r in report.telegram_chat_ids]
    targets += [("wecom", r) for r in report.wecom_users]
    targets += [("wechat", r) for r in report.wechat_contacts]
    return targets


class Deliverer:
    """Sends reports through the running notifiers, with retries; `stop_event` cuts the waits short."""

    def __init__(
        self,
        notifiers: Mapping[str, Notifier],
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.notifiers = notifiers
        self.attempts = max(1, attempts)
        self.backoff_seconds = backoff_seconds
        self.stop_event = stop_event or threading.Event()

    def deliver(self, report: ReportConfig, files: ReportFilesLike) -> list[DeliveryResult]:
        """Send `files` to every chat target of `report`; one result per recipient (never raises)."""
        results = []
        for platform, recipient in recipients(report):
            notifier = self.notifiers.get(platform)
            if notifier is None:
                # The bot is not enabled in this service (or cannot send unprompted yet): say so, once per
                # recipient, so a missing report in a chat has a line in the log that explains it.
                reason = str(msg("report_no_notifier", platform=PLATFORM_NAMES.get(platform, platform)))
                log.warning("report %s: %s (%s)", report.name, reason, recipient)
                results.append(DeliveryResult(platform, recipient, "failed", error=reason))
                continue
            results.append(self._deliver_one(report, notifier, platform, recipient, files))
        return results

    def _deliver_one(
        self, report: ReportConfig, notifier: Notifier, platform: str, recipient: str, files: ReportFilesLike
    ) -> DeliveryResult:
        result = DeliveryResult(platform, recipient, "sent")
        can_send: frozenset[str] = getattr(notifier, "attachments", frozenset())
        parts: list[tuple[str, dict[str, Any]]] = [("text", {"text": files.summary_zh})]
        for kind, path in (("image", files.png), ("document", files.html)):
            if path is None or not path.is_file():
                continue
            if kind in can_send:
                parts.append((kind, {"text": "", kind: path}))
            else:
                result.skipped.append(kind)
        for kind, arguments in parts:
            error = self._send_with_retries(report, notifier, recipient, kind, arguments, result)
            if error is None:
                result.sent.append(kind)
                continue
            result.error = error
            # Without the text nothing else makes sense to the reader; a lost attachment leaves the rest.
            result.status = "failed" if kind == "text" else "partial"
            if kind == "text":
                break
        if result.status == "sent":
            log.info(
                "report %s delivered to %s %s (%s)", report.name, platform, recipient, ", ".join(result.sent)
            )
        return result

    def _send_with_retries(
        self,
        report: ReportConfig,
        notifier: Notifier,
        recipient: str,
        kind: str,
        arguments: dict[str, Any],
        result: DeliveryResult,
    ) -> str | None:
        """None once the part is sent; otherwise the last error, after logging it."""
        backoff = Backoff(base=self.backoff_seconds, factor=BACKOFF_FACTOR, cap=MAX_BACKOFF_SECONDS)
        reason = ""
        for attempt in range(1, self.attempts + 1):
            result.attempts += 1
            try:
                notifier.notify(recipient, **arguments)
                return None
            except Exception as exc:  # any notifier failure: a bug in one must not stop the others
                reason = f"{type(exc).__name__}: {exc}"
                permanent = isinstance(exc, NotifyError) and exc.permanent
            last = permanent or attempt == self.attempts or self.stop_event.is_set()
            if last:
                break
            delay = backoff.next_delay()
            log.warning(
                "report %s: sending the %s to %s %s failed (%s); retry %d/%d in %.0f s",
                report.name, kind, notifier.platform, recipient, reason, attempt, self.attempts - 1, delay,
            )  # fmt: skip
            if self.stop_event.wait(delay):
                break
        failure = msg("report_delivery_failed", target=f"{notifier.platform} {recipient}", reason=reason)
        log.error("report %s: %s", report.name, failure)
        return reason
