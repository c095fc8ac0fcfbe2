"""Which entries of a watched folder are scans to answer, and which are litter, ours, or not files at all.

- Ignore and include patterns are compiled once into one regular expression each (`fnmatch.translate`):
  a 20,000-file rescan used to make ~49 `fnmatch` calls per entry.
- Only regular files are read. FIFOs, sockets and devices are skipped (opening a FIFO blocks forever,
  reading `/dev/zero` never ends); a symbolic link is followed only when it leads to a regular file inside
  the watched folder, or anywhere with `[[watch]] follow_links = true`. Each skipped entry is logged once
  (per kind of entry), not at every rescan.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from service.config import WatchConfig
from service.files import display_path
from service.patterns import compile_patterns

log = logging.getLogger(f"tuwen.{__name__}")


@dataclass(frozen=True)
class Entry:
    """A regular file to consider, with the stat of what it is (the link target for a followed link)."""

    path: Path
    st: os.stat_result


class FolderRules:
    """The patterns and link rules of one watch, precompiled."""

    def __init__(self, watch: WatchConfig) -> None:
        self.watch = watch
        self.root = watch.path
        self.ignore = compile_patterns(watch.all_ignores)
        self.include = compile_patterns(watch.include)
        self._skipped: dict[bytes, tuple[str, int]] = {}

    def is_candidate(self, path: Path) -> bool:
        """Whether `path` (inside the root) is named like a file this watch should answer."""
        try:
            relative = path.relative_to(self.root)
        except ValueError:
            return False
        parts = relative.parts
        if not parts or (not self.watch.recursive and len(parts) > 1):
            return False
        if self.watch.output_dir is not None and path.is_relative_to(self.watch.output_dir):
            return False
        if any(self.ignore.match(part) for part in parts):
            return False
        return self.include.match(parts[-1]) is not None

    def named_like_a_scan(self, name: str) -> bool:
        """A first look at a file name alone (what `is_candidate` then checks with the whole path)."""
        return self.include.match(name) is not None and self.ignore.match(name) is None

    def descend_into(self, path: Path) -> bool:
        """Whether to walk into the folder `path` (ignored folders such as @eaDir and our output tree not)."""
        if self.watch.output_dir is not None and path == self.watch.output_dir:
            return False
        return self.ignore.match(path.name) is None

    def regular_file(self, path: Path) -> os.stat_result | None:
        """The stat of `path` when it is a regular file tuwen may read, else None (logged once per kind).

        Links: followed to a regular file inside the watched folder, or anywhere with `follow_links`.
        """
        try:
            lst = os.lstat(path)
        except OSError:
            return None
        if stat.S_ISREG(lst.st_mode):
            self._skipped.pop(os.fsencode(path), None)
            return lst
        if stat.S_ISLNK(lst.st_mode):
            try:
                target = Path(os.path.realpath(path))
                st = os.stat(path)
            except OSError:
                return self._skip(path, lst, "a broken link")
            if not self.watch.follow_links and not _inside(target, self.root):
                return self._skip(path, lst, "a link to outside the watched folder (follow_links is off)")
            if stat.S_ISDIR(st.st_mode):
                return self._skip(path, lst, "a link to a folder")
            if not stat.S_ISREG(st.st_mode):
                return self._skip(path, lst, "a link to something that is not a file")
            return st
        if stat.S_ISDIR(lst.st_mode):
            return None
        return self._skip(path, lst, _kind(lst.st_mode))

    def _skip(self, path: Path, lst: os.stat_result, why: str) -> os.stat_result | None:
        key = os.fsencode(path)
        seen = (why, lst.st_mtime_ns)
        if self._skipped.get(key) != seen:
            self._skipped[key] = seen
            log.info("%s: skipped %s: %s", self.watch.key, display_path(path), why)
        return None

    def walk(self) -> Iterator[tuple[Path, list[str]]]:
        """(folder, entry names) for every folder to look in, in a stable order.

        Links to folders are never descended; their names are handed out with the files so that
        `regular_file` says once that they are skipped.
        """
        for dirpath, dirnames, filenames in os.walk(self.root):
            base = Path(dirpath)
            linked = [d for d in dirnames if os.path.islink(base / d)]
            descend = self.watch.recursive
            dirnames[:] = sorted(
                d for d in dirnames if descend and d not in linked and self.descend_into(base / d)
            )
            yield base, sorted([*filenames, *linked])


def _inside(target: Path, root: Path) -> bool:
    try:
        return target.is_relative_to(Path(os.path.realpath(root)))
    except (OSError, ValueError):
        return False


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a file"
    return "not a regular file"
