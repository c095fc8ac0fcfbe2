"""The systemd unit in `systemd/tuwen.service`: systemd accepts it, and it keeps the hardening we promise.

Two kinds of check. `systemd-analyze verify` is systemd's own parser, so it catches misspelled directives and
bad values that a text check cannot; it exits 0 even for unknown keys, so its messages are read instead of
its exit status. The pure-Python checks parse the file line by line (directives such as `LoadCredential=`
repeat, which `configparser` would collapse) and pin the promises: the sandbox, the restart policy, a stop
timeout longer than the service's own, and secrets that only ever arrive through the credential store or an
environment file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr

from service.app import STOP_TIMEOUT_SECONDS
from service.config import Config

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "tuwen.service"

# Messages `systemd-analyze verify` prints because this machine is not the target box: the venv, the
# `tuwen` user and the data directory do not exist here. Anything else (an unknown key, a value that does
# not parse) fails the test.
HARMLESS_MESSAGES = (
    re.compile(r"Command \S+ is not executable: No such file or directory"),
    re.compile(r"Failed to resolve (user|group) .*tuwen"),
    re.compile(r"(User|Group) .*tuwen.* (not found|does not exist)"),
)

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """`{section: {key: [values in order]}}` of a unit file; comments and blank lines dropped."""
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def seconds(value: str) -> float:
    """A systemd time span such as `90`, `90s`, `1min 30s` or `2min`, in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value))


@pytest.fixture(scope="module")
def unit() -> Unit:
    """The parsed unit file."""
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def service_values(unit: Unit, key: str) -> list[str]:
    """Every value of `key` in [Service]."""
    return unit["Service"].get(key, [])


# -- systemd's own parser -----------------------------------------------------------------------------------

requires_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian: apt-get install systemd); the text checks still run",
)


def verify(unit_text: str, directory: Path) -> list[str]:
    """Run `systemd-analyze verify` on a copy whose ExecStart exists here; return its unexpected messages."""
    copy = directory / "tuwen.service"
    # The real ExecStart lives in /opt/tuwen/.venv on the target box; verify insists the binary exists.
    copy.write_text(re.sub(r"(?m)^ExecStart=.*$", "ExecStart=/bin/true", unit_text), encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.strip() and not any(p.search(line) for p in HARMLESS_MESSAGES)]


@requires_systemd_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    assert verify(UNIT.read_text(encoding="utf-8"), tmp_path) == []


@requires_systemd_analyze
@pytest.mark.parametrize(
    ("line", "reported"),
    [
        ("ProtectFoo=yes", "Unknown key"),
        ("Restart=sometimes", "Failed to parse"),
    ],
)
def test_systemd_analyze_verify_reports_mistakes(tmp_path: Path, line: str, reported: str) -> None:
    # Proves the check above is not vacuous on this systemd version: a typo in the unit is caught.
    broken = UNIT.read_text(encoding="utf-8").replace("\n[Service]\n", f"\n[Service]\n{line}\n", 1)
    assert any(reported in message for message in verify(broken, tmp_path))


# -- the promises, read from the text -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "expected"),
    [
        ("Unit", "StartLimitBurst", "5"),
        ("Service", "User", "tuwen"),
        ("Service", "ExecStart", "/opt/tuwen/.venv/bin/tuwen serve -c /etc/tuwen/config.toml"),
        ("Service", "Restart", "on-failure"),
        ("Service", "NoNewPrivileges", "yes"),
        ("Service", "ProtectSystem", "strict"),
        ("Service", "PrivateTmp", "yes"),
        ("Service", "ProtectHome", "yes"),
        ("Service", "KillSignal", "SIGTERM"),
        ("Service", "EnvironmentFile", "-/etc/tuwen/tuwen.env"),
        ("Service", "StandardError", "journal"),
        ("Service", "LimitNOFILE", "65536"),
        ("Install", "WantedBy", "multi-user.target"),
    ],
)
def test_required_directive(unit: Unit, section: str, key: str, expected: str) -> None:
    assert unit[section].get(key) == [expected]


@pytest.mark.parametrize(("section", "key"), [("Unit", "StartLimitIntervalSec"), ("Service", "RestartSec")])
def test_restart_pacing_is_set(unit: Unit, section: str, key: str) -> None:
    assert seconds(unit[section][key][0]) > 0


@pytest.mark.parametrize("path", ["/var/lib/tuwen", "/srv/scans"])
def test_data_and_watch_folders_are_writable(unit: Unit, path: str) -> None:
    # A leading "-" (ignore when missing) is fine: tuwen itself retries a folder that is not there yet.
    assert path in {value.lstrip("-") for value in service_values(unit, "ReadWritePaths")}


def test_stop_timeout_outlasts_the_services_own(unit: Unit) -> None:
    # systemd must not SIGKILL tuwen while its worker is still allowed to finish the job in hand.
    assert seconds(service_values(unit, "TimeoutStopSec")[0]) > STOP_TIMEOUT_SECONDS + 10


@pytest.mark.parametrize(
    ("key", "forbidden"),
    [
        ("PrivateDevices", "yes"),  # hides /dev/nvidia*
        ("ProtectClock", "yes"),  # implies DeviceAllow=char-rtc, which turns device access into an allow-list
        ("ProcSubset", "pid"),  # hides /proc/driver/nvidia
        ("MemoryDenyWriteExecute", "yes"),  # CUDA PTX JIT, Triton kernels
    ],
)
def test_no_setting_that_hides_the_gpu(unit: Unit, key: str, forbidden: str) -> None:
    assert forbidden not in service_values(unit, key)


def test_no_device_allow_list(unit: Unit) -> None:
    assert service_values(unit, "DeviceAllow") == [] and service_values(unit, "DevicePolicy") == []


def _secret_settings() -> set[str]:
    """`table__key` for every secret tuwen's config knows (the names it reads from $CREDENTIALS_DIRECTORY)."""
    return {
        f"{table}__{key}"
        for table, field in Config.model_fields.items()
        for key, sub in getattr(field.annotation, "model_fields", {}).items()
        if sub.annotation is SecretStr
    }


def test_every_secret_comes_through_load_credential(unit: Unit) -> None:
    # A secret added to the config later must get its LoadCredential= line too, or it could only be
    # configured inline.
    credentials = {value.split(":", 1)[0] for value in service_values(unit, "LoadCredential")}
    assert credentials == _secret_settings()


def test_the_documented_credentials_are_loaded(unit: Unit) -> None:
    credentials = {value.split(":", 1)[0] for value in service_values(unit, "LoadCredential")}
    assert {"openai__api_key", "http__api_key"} <= credentials


def test_credentials_come_from_the_credential_store(unit: Unit) -> None:
    # A bare name is looked up in /etc/credstore and skipped when missing; an absolute path that does not
    # exist would stop the unit from starting (status 243/CREDENTIALS).
    assert all(":" not in value for value in service_values(unit, "LoadCredential"))


def test_no_secret_is_written_inline(unit: Unit) -> None:
    inline = " ".join(
        service_values(unit, "Environment")
        + service_values(unit, "ExecStart")
        + service_values(unit, "SetCredential")
        + service_values(unit, "SetCredentialEncrypted")
    )
    assert not re.search(r"(?i)api_?key|token|secret|password", inline)


def test_offline_hub_switch_is_offered_commented_out() -> None:
    assert "#Environment=HF_HUB_OFFLINE=1" in UNIT.read_text(encoding="utf-8").splitlines()
