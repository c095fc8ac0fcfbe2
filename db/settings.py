"""Service-wide settings changed at run time (`settings`), kept in the database so a restart keeps them.

Today there is one: `backlog_paused`. It lives here rather than in memory because every node sharing the
database must see it (a paused backlog is paused everywhere) and because "paused" must survive a restart:
someone who paused the folders for an exhibition opening does not expect a reboot to resume them.
"""

from __future__ import annotations

from typing import Any

from db.models import Setting, utcnow
from db.store import Store

BACKLOG_PAUSED = "backlog_paused"


class SettingsStore:
    """Read and write named settings."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, name: str) -> Setting | None:
        """The setting's row (value, when and by whom it was set), or None when never set."""
        with self.store.read_session() as session:
            return session.get(Setting, name)

    def value(self, name: str, default: Any = None) -> Any:
        """The setting's value, or `default` when never set."""
        row = self.get(name)
        return default if row is None else row.value

    def set(self, name: str, value: Any, by: str) -> Setting:
        """Set (or replace) a setting; returns the row."""
        with self.store.write_session() as session:
            row = session.get(Setting, name)
            if row is None:
                row = Setting(name=name)
                session.add(row)
            row.value, row.updated_at, row.updated_by = value, utcnow(), by[:128]
            session.flush()
            return row
