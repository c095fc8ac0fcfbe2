"""The explicit registry of event sources, built from config in one visible place.

This and `service/cli.py` are the composition roots: the only service modules that know adapters exist.
Imports are lazy so an optional adapter (wechaty, later) costs nothing unless configured, and so the core
modules keep importing nothing from `watchers/` or `bots/`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.config import Config
    from service.queue import JobQueue
    from service.sources import Source


def build_sources(config: Config, queue: JobQueue) -> list[Source]:
    """One source per configured watch (bots and others join here in later issues)."""
    sources: list[Source] = []
    if config.watch:
        from watchers.folder import FolderWatcher

        sources.extend(
            FolderWatcher(watch, queue, max_file_mb=config.images.max_file_mb) for watch in config.watch
        )
    if config.telegram.enabled:
        from bots.telegram import TelegramBot

        sources.append(TelegramBot(config, queue))
    if config.wecom.enabled:
        from bots.wecom import WeComBot

        sources.append(WeComBot(config, queue))
    if config.wechat.enabled:
        # python-wechaty is an optional extra (`pip install .[wechat]`); bots.wechat says so if missing.
        from bots.wechat import WeChatBot

        sources.append(WeChatBot(config, queue))
    return sources
