"""Finding, reading and checking `config.toml`, with errors a person can act on.

Resolution order: `-c PATH`, then `$TUWEN_CONFIG`, then `./config.toml`, then built-in defaults. Secrets
(and any other scalar key of a plain table) may be overridden from the environment as
`TUWEN_<TABLE>__<KEY>` (e.g. `TUWEN_OPENAI__API_KEY`) or from a file `<table>__<key>` in systemd's
`$CREDENTIALS_DIRECTORY`. Errors are reported one per line as `key.path: value reason`, the way Frigate
reports config errors, so an IT generalist can find the line to fix.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.config import Config
from service.errors import ConfigError
from service.messages import msg


def resolve_config_path(cli_path: str | os.PathLike[str] | None) -> Path | None:
    """`-c PATH`, then `$TUWEN_CONFIG`, then `./config.toml`; None means built-in defaults."""
    if cli_path:
        return Path(cli_path)
    env = os.environ.get("TUWEN_CONFIG")
    if env:
        return Path(env)
    local = Path("config.toml")
    return local if local.is_file() else None


def load_config(cli_path: str | os.PathLike[str] | None = None) -> Config:
    """Load, overlay secrets, validate. Raises `ConfigError` with one line per problem."""
    path = resolve_config_path(cli_path)
    if path is None:
        data: dict[str, Any] = {"watch": [{"path": "inbox"}]}
        source = "(built-in defaults)"
        base_dir = Path.cwd()
    else:
        source = str(path)
        if not path.is_file():
            raise ConfigError(source, [str(msg("config_missing", path=path))])
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(source, [str(msg("config_toml", reason=exc))]) from exc
        base_dir = path.resolve().parent
    _overlay_secrets(data)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_errors(exc, data)) from exc
    return _resolve_relative_paths(config, base_dir if path is not None else Path.cwd())


def _resolve_relative_paths(config: Config, base_dir: Path) -> Config:
    # Relative paths mean "relative to the config file", as in systemd units and most servers; that way
    # `tuwen serve -c /etc/tuwen/config.toml` does not depend on the working directory.
    def absolute(p: Path) -> Path:
        return p if p.is_absolute() else (base_dir / p)

    config.storage.data_dir = absolute(config.storage.data_dir)
    for report in config.report:
        if report.folder is not None:
            report.folder = absolute(report.folder)
    for watch in config.watch:
        watch.path = absolute(watch.path)
        if watch.output_dir is not None:
            watch.output_dir = absolute(watch.output_dir)
    return config


def _overlay_secrets(data: dict[str, Any]) -> None:
    overrides: dict[tuple[str, str], str] = {}
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and Path(cred_dir).is_dir():
        for file in Path(cred_dir).iterdir():
            if "__" in file.name and file.is_file():
                table, key = file.name.lower().split("__", 1)
                overrides[(table, key)] = file.read_text(encoding="utf-8").strip()
    for name, value in os.environ.items():
        if name.startswith("TUWEN_") and "__" in name:
            table, key = name[len("TUWEN_") :].lower().split("__", 1)
            overrides[(table, key)] = value
    for (table, key), value in overrides.items():
        section = data.setdefault(table, {})
        if isinstance(section, dict):
            section[key] = value


def format_validation_errors(exc: ValidationError, data: dict[str, Any]) -> list[str]:
    """Turn pydantic's errors into `key.path: value reason` lines."""
    lines = []
    for error in exc.errors():
        path = _format_loc(error["loc"])
        kind = error["type"]
        value = error.get("input")
        if kind == "literal_error":
            expected = error.get("ctx", {}).get("expected", "")
            choices = ", ".join(part.strip(" '") for part in expected.replace(" or ", ", ").split(","))
            lines.append(f"{path}: {value!r} is not one of {choices}")
        elif kind == "extra_forbidden":
            lines.append(f"{path}: unknown key (not a tuwen setting; check its spelling and table)")
        elif kind == "missing":
            lines.append(f"{path}: required but missing")
        else:
            reason = error["msg"].removeprefix("Value error, ")
            hidden = ("key", "token", "secret", "database_url")
            shown = "***" if any(word in path for word in hidden) else repr(value)
            lines.append(f"{path}: {shown} {reason[0].lower() + reason[1:] if reason else ''}")
    return lines


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out
