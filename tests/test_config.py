"""Config: the example validates and documents every key; bad files give key path, value and reason."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from service.config import Config
from service.config_load import load_config
from service.errors import ConfigError
from service.messages import all_codes, msg

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.toml"


def _fields(model: type[BaseModel], prefix: str) -> list[tuple[str, str]]:
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        inner = getattr(annotation, "__args__", (None,))[0] if prefix == "" else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.extend(_fields(annotation, name))
        elif inner is not None and isinstance(inner, type) and issubclass(inner, BaseModel):
            out.extend(_fields(inner, name))  # an array of tables: [[watch]], [[report]]
        else:
            out.append((prefix, name))
    return out


def _documented_keys(text: str) -> set[tuple[str, str]]:
    """(table, key) for every key line, commented out or not, that has a comment line right above it."""
    keys: set[tuple[str, str]] = set()
    table = ""
    previous = ""
    for raw in text.splitlines():
        line = raw.strip()
        header = re.match(r"^(?:#\s*)?\[\[?([a-z_]+)\]\]?$", line)
        if header:
            table = header.group(1)
        key = re.match(r"^#?\s*([a-z_]+)\s*=", line)
        if key and previous.startswith("#"):
            keys.add((table, key.group(1)))
        previous = line
    return keys


def test_example_validates_and_uses_the_embedded_backend() -> None:
    config = load_config(EXAMPLE)
    assert config.model.backend == "ocr"
    assert config.watch[0].path == REPO / "inbox"
    assert config.storage.data_dir == REPO / "data"


def test_example_documents_every_key() -> None:
    documented = _documented_keys(EXAMPLE.read_text(encoding="utf-8"))
    missing = [f"{table}.{key}" for table, key in _fields(Config, "") if (table, key) not in documented]
    assert missing == []


def test_example_has_the_keys_the_issue_names() -> None:
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert data["model"]["backend"] == "ocr"
    assert data["model"]["path"] == "zai-org/GLM-4.6V-Flash"
    assert data["storage"]["data_dir"] == "data"
    assert (data["http"]["host"], data["http"]["port"]) == ("127.0.0.1", 8080)
    assert data["watch"][0]["path"] == "inbox"
    assert data["watch"][0]["stable_seconds"] == 5


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[model]\nbackend = "gpt-9"\n', "model.backend: 'gpt-9' is not one of ocr, transformers, openai"),
        ("[model]\nbackennd = 1\n", "model.backennd: unknown key"),
        ("[telegramm]\ntoken = 'x'\n", "telegramm: unknown key"),
        ("[[watch]]\nprompt = 'x'\n", "watch[0].path: required but missing"),
        ("[[watch]]\npath = 'a'\nstable_seconds = -1\n", "watch[0].stable_seconds: -1"),
        ("[http]\nport = 70000\n", "http.port: 70000"),
        ("[http]\ntimezone = 'Mars/Olympus'\n", "http.timezone: 'Mars/Olympus' is not a known timezone"),
        ("[[watch]]\npath = 'a'\n[[watch]]\npath = 'a'\n", "two watches share the name"),
        ("[[watch]]\npath = 'a'\nprompt = '  '\n", "prompt must not be empty"),
        ("[model\n", "not valid TOML"),
    ],
)
def test_invalid_config_reports_key_value_and_reason(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(expected in line for line in info.value.lines), info.value.lines


def test_check_config_command_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nbackend = "gpt-9"\n', encoding="utf-8")
    run = [sys.executable, "-m", "service.cli", "check-config", "-c"]
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True, cwd=REPO)
    assert failed.returncode == 1
    assert "model.backend: 'gpt-9' is not one of ocr, transformers, openai" in failed.stderr
    assert "配置文件有误" in failed.stderr
    copy = tmp_path / "config.toml"
    copy.write_text(EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "inbox").mkdir()
    good = subprocess.run([*run, str(copy)], capture_output=True, text=True, cwd=REPO)
    assert good.returncode == 0, good.stderr
    assert "配置有效" in good.stdout


@pytest.mark.parametrize("problem", ["watch-missing", "watch-read-only", "data-dir", "model-missing"])
def test_check_config_checks_the_machine_too(tmp_path: Path, problem: str) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    lines = ['[storage]\ndata_dir = "data"', '[[watch]]\npath = "inbox"']
    expected = {
        "watch-missing": "does not exist",
        "watch-read-only": "cannot be written",
        "data-dir": "the data folder",
        "model-missing": "no config.json",
    }[problem]
    if problem == "watch-missing":
        inbox.rmdir()
    if problem == "watch-read-only":
        shares = tmp_path / "share-ro"
        shares.mkdir()
        if subprocess.run(["mount", "--bind", str(inbox), str(shares)], capture_output=True).returncode:
            pytest.skip("cannot bind-mount here")
        subprocess.run(["mount", "-o", "remount,bind,ro", str(shares)], capture_output=True)
        lines[1] = '[[watch]]\npath = "share-ro"\nname = "inbox"'
    if problem == "data-dir":
        (tmp_path / "data").write_text("a file, not a folder", encoding="utf-8")
    if problem == "model-missing":
        lines.append('[model]\nbackend = "transformers"\npath = "/srv/models/not-downloaded-yet"')
    config = tmp_path / "config.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", "check-config", "-c", str(config)],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
    finally:
        if problem == "watch-read-only":
            subprocess.run(["umount", "-l", str(tmp_path / "share-ro")], capture_output=True)
    assert result.returncode == 1
    assert expected in result.stderr and "配置有效" not in result.stdout


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUWEN_CONFIG", raising=False)
    defaults = load_config(None)
    assert defaults.model.backend == "ocr"
    assert defaults.watch[0].path == tmp_path / "inbox"
    (tmp_path / "config.toml").write_text('[model]\nbackend = "openai"\n', encoding="utf-8")
    assert load_config(None).model.backend == "openai"
    env_file = tmp_path / "env.toml"
    env_file.write_text('[model]\nbackend = "transformers"\n', encoding="utf-8")
    monkeypatch.setenv("TUWEN_CONFIG", str(env_file))
    assert load_config(None).model.backend == "transformers"
    cli_file = tmp_path / "cli.toml"
    cli_file.write_text("[storage]\ndata_dir = 'elsewhere'\n", encoding="utf-8")
    assert load_config(cli_file).storage.data_dir == tmp_path / "elsewhere"
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_secrets_from_environment_and_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[openai]\nbase_url = "http://127.0.0.1:9/v1"\n', encoding="utf-8")
    monkeypatch.setenv("TUWEN_OPENAI__API_KEY", "sk-from-env")
    assert load_config(path).openai.api_key.get_secret_value() == "sk-from-env"
    monkeypatch.delenv("TUWEN_OPENAI__API_KEY")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "http__api_key").write_text("from-systemd\n", encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    config = load_config(path)
    assert config.http.api_key.get_secret_value() == "from-systemd"
    assert "from-systemd" not in repr(config)


def test_secret_values_are_not_echoed_in_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[openai]\ntimeout_seconds = -5\n", encoding="utf-8")
    monkeypatch.setenv("TUWEN_OPENAI__API_KEY", "sk-secret-123")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "sk-secret-123" not in str(info.value)


@pytest.mark.parametrize("code", all_codes())
def test_every_message_has_chinese_and_english(code: str) -> None:
    text = str(msg(code))
    zh, en = text.split(" / ", 1)
    assert re.search(r"[\u4e00-\u9fff]", zh), code
    assert re.search(r"[A-Za-z]", en) and not re.search(r"[\u4e00-\u9fff]", en), code
