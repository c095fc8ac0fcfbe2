"""File names as they really are on disk: bytes that are often not UTF-8.

Windows shares and zip files hand Linux names in GBK; Python gives them to us as `str` with lone surrogates
(surrogateescape), which open() understands but a database text column, a JSON document written as UTF-8,
an XML file or a log line cannot hold. The rule everywhere in tuwen: keep the real `str` (or its bytes) for
opening and naming files, and show people `display_path(...)`, with every undecodable byte as U+FFFD.
"""

from __future__ import annotations

import os

# Longest name most filesystems allow, in bytes (ext4, XFS, Btrfs, NTFS via SMB in UTF-8).
NAME_MAX = 255


def display_path(path: str | os.PathLike[str]) -> str:
    """`path` with undecodable bytes shown as U+FFFD (safe for databases, JSON, XML and logs)."""
    raw = os.fsencode(os.fspath(path))
    return raw.decode("utf-8", errors="replace")


def path_bytes(path: str | os.PathLike[str]) -> bytes:
    """The path exactly as the filesystem has it."""
    return os.fsencode(os.fspath(path))


def name_fits(name: str, suffix: str) -> bool:
    """Whether `name` + `suffix` is a legal file name length (counted in bytes, as the kernel counts)."""
    return len(os.fsencode(name)) + len(os.fsencode(suffix)) <= NAME_MAX
