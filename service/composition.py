"""The composition root: the one visible place that turns a config into running parts.

Two builds, and nothing else decides what exists:
- `build_service(config)`: what `tuwen serve` runs: the store, the queue, the one model worker, the node
  heartbeat, the upload clean-up, and one source per configured watch and bot;
- `build_one_shot(config)`: what `tuwen ask` and `tuwen batch` use: the queue and, when no service is running
  on the same database, a worker of their own (`service.oneshot`).

This is the only module of `service/` that imports `watchers/` or `bots/` (a test checks it). Adapters are
imported lazily, so an optional one (wechaty) costs nothing unless configured. Layers below get their
collaborators handed in (Frigate's `create_app(config, db, …)`); nothing is discovered by scanning folders.
"""

from __future__ import annotations

import logging

from service.app import App, Spine
from service.backends.registry import create_backend
from service.config import Config
from service.nodes import NodeHeartbeat, requeue_orphans
from service.oneshot import OneShot
from service.queue import JobQueue
from service.retention import RetentionSweeper
from service.sources import Source
from service.storage import open_store
from service.worker import BackendFactory, ModelWorker

log = logging.getLogger(f"tuwen.{__name__}")


def build_service(config: Config, *, backend_factory: BackendFactory = create_backend) -> App:
    """The resident service for `config` (not started). `StartupError` when its database is unusable."""
    store = open_store(config)
    requeued = requeue_orphans(store, config.node.lease_seconds, config.node.name)
    if requeued:
        log.warning("re-queued %d job(s) left running by an earlier stop or crash", requeued)
    queue = JobQueue(store)
    node = config.node
    queue.origin_node = node.name
    spine = Spine(
        store=store,
        queue=queue,
        worker=ModelWorker(config, store, queue, backend_factory, node=node.name),
        heartbeat=NodeHeartbeat(
            store, node.name, config.model.backend, node.heartbeat_seconds, node.lease_seconds
        ),
        retention=RetentionSweeper(config.storage.data_dir, config.storage.keep_uploads_days),
    )
    return App(config, spine, build_sources(config, queue))


def build_one_shot(config: Config, *, backend_factory: BackendFactory = create_backend) -> OneShot:
    """The queue and answerer of a one-shot command. `StartupError` when the database is unusable."""
    return OneShot(config, backend_factory=backend_factory)


def build_sources(config: Config, queue: JobQueue) -> list[Source]:
    """One source per configured watch and enabled bot, in start order."""
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
