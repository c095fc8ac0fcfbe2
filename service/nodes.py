"""Running `tuwen serve` processes and their heartbeats, in the database they share.

Each `tuwen serve` writes a row in `nodes` at start and refreshes `heartbeat_at` every
`[node] heartbeat_seconds`. A one-shot `tuwen ask` or `tuwen batch` looks here first: when a live node uses
the same database, the command hands its jobs to it (the node owns the model; loading a second copy of a 9B
model beside it would not fit on the GPU) and waits for the results in the database. A node silent for
`[node] lease_seconds` is taken for dead.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta

from sqlalchemy import select

from db.models import Node, utcnow
from db.store import Store
from service import __version__
from service.errors import StorageUnavailable

log = logging.getLogger(f"tuwen.{__name__}")


class NodeHeartbeat:
    """Registers this process as a node and keeps its heartbeat fresh on a small thread."""

    def __init__(
        self, store: Store, name: str, backend: str, interval: float, lease_seconds: float | None = None
    ) -> None:
        self.store = store
        # With a lease, every beat also re-queues what nodes silent for longer than it left running.
        self.lease_seconds = lease_seconds
        self.name = name
        self.backend = backend
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self) -> None:
        """Write this node's row (a write: it also proves the database is writable at start)."""
        with self.store.write_session() as session:
            node = session.get(Node, self.name) or Node(name=self.name)
            node.host, node.pid, node.version, node.backend = (
                socket.gethostname(),
                os.getpid(),
                __version__,
                self.backend,
            )
            node.started_at = node.heartbeat_at = utcnow()
            node.stopped_at = None
            session.merge(node)

    def start(self) -> None:
        """Refresh the heartbeat every `interval` seconds until `stop()`."""
        self._thread = threading.Thread(target=self._beat, name="tuwen-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and mark the node stopped (so the CLI does not wait for it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        try:
            with self.store.write_session() as session:
                node = session.get(Node, self.name)
                if node is not None and node.pid == os.getpid():
                    node.stopped_at = utcnow()
        except StorageUnavailable:
            log.warning(
                "could not mark node %s stopped; it is taken for dead once its lease runs out", self.name
            )

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.store.write_session() as session:
                    node = session.get(Node, self.name)
                    if node is not None:
                        node.heartbeat_at = utcnow()
                if self.lease_seconds is not None:
                    requeued = requeue_orphans(self.store, self.lease_seconds, own_node=self.name)
                    if requeued:
                        log.warning("re-queued %d job(s) of a node whose heartbeat lease ran out", requeued)
            except StorageUnavailable:
                pass  # Store.health reports it; the next beat tries again


def live_nodes(store: Store, lease_seconds: float) -> list[Node]:
    """Nodes whose heartbeat is younger than `lease_seconds` and that have not said they stopped."""
    cutoff = utcnow() - timedelta(seconds=lease_seconds)
    with store.read_session() as session:
        return list(
            session.scalars(
                select(Node).where(Node.heartbeat_at >= cutoff, Node.stopped_at.is_(None)).order_by(Node.name)
            )
        )


def cli_node_name() -> str:
    """The `jobs.node` a one-shot command's own worker claims with: `cli:<host>:<pid>`."""
    return f"cli:{socket.gethostname()}:{os.getpid()}"


def requeue_orphans(
    store: Store, lease_seconds: float, starting_node: str | None = None, *, own_node: str | None = None
) -> int:
    """Give back jobs left `running` by a process that is gone (a crash, kill -9, a power cut).

    A job's claimer is gone when it is a node whose heartbeat lease ran out (or this very node, starting
    again), or a one-shot command on this host whose process no longer exists. Jobs a live node or a live
    command holds are left alone, and so is `own_node` (a running node checking on the others).

    Each re-queue is conditional on the claimer still holding the job: two live nodes that both saw a dead
    one's claims re-queue each job once, and never one that a live node has claimed since.
    """
    alive = {node.name for node in live_nodes(store, lease_seconds)}
    if starting_node is not None:
        alive.discard(starting_node)
    if own_node is not None:
        alive.add(own_node)
    host = socket.gethostname()
    orphans: dict[str | None, list[int]] = {}
    for job_id, node in store.running_claims():
        if node is None or (not node.startswith("cli:") and node not in alive):
            orphans.setdefault(node, []).append(job_id)
        elif node.startswith("cli:"):
            _, claim_host, pid = node.split(":", 2)
            if claim_host == host and not _pid_alive(int(pid) if pid.isdigit() else -1):
                orphans.setdefault(node, []).append(job_id)
    return sum(store.requeue(ids, held_by=node) for node, ids in orphans.items())


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
