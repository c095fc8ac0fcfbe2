"""Only regular files are read, and reading is bounded: FIFOs, sockets, devices and directories are refused
before they are opened (opening a FIFO blocks until a writer comes), and `sha256_file` reads at most its
limit + 1 bytes. Each test has a timeout: a regression here hangs rather than fails.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from service import images
from service.config import ImagesConfig
from service.errors import PermanentError
from service.images import decode_image, sha256_file
from tests.test_images import assert_bilingual

pytestmark = pytest.mark.timeout(20)


def fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "scan.jpg")
    return tmp / "scan.jpg"


def unix_socket(tmp: Path) -> Path:
    path = tmp / "s.jpg"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))  # the socket file stays after the socket object is gone
    server.close()
    return path


def link_to_fifo(tmp: Path) -> Path:
    (tmp / "photo.jpg").symlink_to(fifo(tmp))
    return tmp / "photo.jpg"


def directory(tmp: Path) -> Path:
    (tmp / "folder.pdf").mkdir()
    return tmp / "folder.pdf"


def dev_zero(tmp: Path) -> Path:
    return Path("/dev/zero")


def dev_null(tmp: Path) -> Path:
    return Path("/dev/null")


IRREGULAR = [
    pytest.param(fifo, "named pipe (FIFO)", id="fifo"),
    pytest.param(link_to_fifo, "named pipe (FIFO)", id="symlink-to-fifo"),
    pytest.param(unix_socket, "socket", id="socket"),
    pytest.param(dev_zero, "character device", id="dev-zero"),
    pytest.param(dev_null, "character device", id="dev-null"),
    pytest.param(directory, "directory", id="directory"),
]


@pytest.mark.parametrize(("build", "kind"), IRREGULAR)
def test_decode_refuses_what_is_not_a_regular_file(
    tmp_path: Path, build: Callable[[Path], Path], kind: str
) -> None:
    path = build(tmp_path)
    with pytest.raises(PermanentError) as caught:
        decode_image(path, ImagesConfig())
    assert caught.value.code == "image_unreadable" and kind in caught.value.message.en
    assert_bilingual(caught.value)


@pytest.mark.parametrize(("build", "kind"), IRREGULAR)
def test_hashing_refuses_what_is_not_a_regular_file(
    tmp_path: Path, build: Callable[[Path], Path], kind: str
) -> None:
    with pytest.raises(PermanentError) as caught:
        sha256_file(build(tmp_path), max_bytes=1024)
    assert caught.value.code == "image_unreadable" and kind in caught.value.message.en


def test_a_missing_file_is_still_an_os_error_for_hashing(tmp_path: Path) -> None:
    # The watcher retries OSError later (a file still being copied onto a share); it must stay one.
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "gone.jpg")


def test_a_file_of_exactly_max_bytes_is_hashed(tmp_path: Path) -> None:
    data = os.urandom(4096)
    (tmp_path / "scan.tif").write_bytes(data)
    assert sha256_file(tmp_path / "scan.tif", max_bytes=4096) == hashlib.sha256(data).hexdigest()


def test_a_file_over_max_bytes_is_too_large(tmp_path: Path) -> None:
    (tmp_path / "scan.tif").write_bytes(os.urandom(4097))
    with pytest.raises(PermanentError) as caught:
        sha256_file(tmp_path / "scan.tif", max_bytes=4096)
    assert caught.value.code == "image_too_large"
    assert_bilingual(caught.value)


class CountingReader:
    """Wraps an open file and counts the bytes read from it."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.read_bytes += len(data)
        return data

    def fileno(self) -> int:
        return self.handle.fileno()

    def __enter__(self) -> CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_the_read_itself_stops_after_max_bytes_plus_one_when_the_size_lies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # /proc files are regular files that report size 0 and then give kilobytes: only the read bound holds.
    assert os.stat("/proc/self/maps").st_size == 0
    readers: list[CountingReader] = []
    real_open = images.open_regular

    def counting_open(path: Path) -> CountingReader:
        readers.append(CountingReader(real_open(path)))
        return readers[-1]

    monkeypatch.setattr(images, "open_regular", counting_open)
    with pytest.raises(PermanentError) as caught:
        sha256_file(Path("/proc/self/maps"), chunk_size=7, max_bytes=100)
    assert caught.value.code == "image_too_large"
    assert [reader.read_bytes for reader in readers] == [101]


def test_batch_collects_regular_files_only(tmp_path: Path) -> None:
    from service.batch import collect_files

    (tmp_path / "links").mkdir()
    link_to_fifo(tmp_path / "links")
    fifo(tmp_path)
    unix_socket(tmp_path)
    (tmp_path / "real.jpg").write_bytes(b"\xff\xd8\xff")
    assert collect_files(tmp_path, ignores=()) == [tmp_path / "real.jpg"]
