"""`tuwen check-config` beyond the file itself: can this configuration actually run on this machine?

Each problem is a catalogue message saying what is wrong and what to do; notes are things worth knowing
that do not stop a start (a model that will be downloaded on first start). Nothing here changes anything:
writability is probed with a temporary file that is removed at once, in folders tuwen would write anyway.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from service.config import Config
from service.messages import Message, msg


def environment_problems(config: Config) -> tuple[list[Message], list[Message]]:
    """(problems, notes) for `config` on this machine."""
    problems: list[Message] = []
    notes: list[Message] = []
    data_dir = config.storage.data_dir
    if not _writable_or_creatable(data_dir):
        problems.append(msg("check_data_dir", path=data_dir))
    for watch in config.watch:
        problems.extend(_watch_problems(watch.key, watch.path, watch.output_dir))
    if config.model.backend == "transformers":
        problem, note = _model_problems(config.model.path)
        problems.extend(problem)
        notes.extend(note)
    return problems, notes


def _watch_problems(key: str, path: Path, output_dir: Path | None) -> list[Message]:
    if not path.is_dir():
        return [msg("check_watch_missing", name=key, path=path)]
    if not os.access(path, os.R_OK | os.X_OK):
        return [msg("check_watch_unreadable", name=key, path=path)]
    target = output_dir if output_dir is not None else path
    if not _writable_or_creatable(target):
        where = "output_dir" if output_dir is not None else "beside the scans"
        return [msg("check_watch_unwritable", name=key, path=target, where=where)]
    return []


def _model_problems(model_path: str) -> tuple[list[Message], list[Message]]:
    problems: list[Message] = []
    notes: list[Message] = []
    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None:
        problems.append(msg("gpu_extra_missing"))
    local = Path(model_path).expanduser()
    looks_local = model_path.startswith(("/", ".", "~")) or local.exists()
    if looks_local:
        if not (local / "config.json").is_file():
            problems.append(msg("check_model_missing", path=local))
    else:
        notes.append(msg("check_model_download", model=model_path))
    return problems, notes


def _writable_or_creatable(folder: Path) -> bool:
    """Whether tuwen could write in `folder` (or create it under its nearest existing parent)."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    if not probe.is_dir():
        return False
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".tuwen-check-"):
            return True
    except OSError:
        return False
