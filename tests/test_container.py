"""The container image as a user runs it: built with `make image-offline` (no registry), started with podman.

One build per test session (a session fixture): debootstrap's root file system, the wheelhouse's
dependency wheels and the imported base image are cached under build/ by the Makefile, keyed by what they
are made from, so a second session only rebuilds tuwen's own wheel and the image. The tests skip, saying
why, where podman, buildah, debootstrap or root are missing (a developer laptop); where they are present
(this machine, CI via .ci/run) they run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from service.config import Config
from service.config_load import load_config
from tests.conftest import wait_until

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "build" / "container-test"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# Runtime flags this kind of machine needs (crun fails here; higher ulimits are refused). They are also what
# the image must cope with: tuwen raises its soft file limit only up to the hard one.
RUN_FLAGS = ["--network", "host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
# Per checkout, so two worktrees testing at once do not replace each other's image.
IMAGE = "localhost/tuwen:test-" + hashlib.sha256(str(REPO).encode()).hexdigest()[:8]
ONE_GB = 1_000_000_000

# The first test to ask for the build waits for it: minutes, not the suite's default 300 s per test.
slow = pytest.mark.timeout(600)


@dataclass(frozen=True)
class Build:
    """What `make image-offline` produced."""

    image: str
    seconds: float
    tarball: Path


def _podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", "--runtime", "runc", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def _why_no_build() -> str | None:
    """None when an offline image build can run here, else the reason to skip."""
    for tool in ("podman", "buildah", "debootstrap", "runc", "make"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs it)"
    if os.geteuid() != 0:
        return "debootstrap and the image build need root"
    if sys.version_info[:2] != (3, 11):
        found = ".".join(map(str, sys.version_info[:2]))
        return f"the wheelhouse is built with this Python ({found}); the base image has Python 3.11"
    info = subprocess.run(["podman", "--runtime", "runc", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        return f"podman cannot run here: {info.stderr.strip()[-300:]}"
    if not any((REPO / "build" / "image").glob("rootfs-*.tar")):
        try:
            urllib.request.urlopen(f"{DEBIAN_MIRROR}/dists/bookworm/Release", timeout=15).close()
        except OSError as exc:
            return f"the Debian mirror {DEBIAN_MIRROR} is unreachable for debootstrap: {exc}"
    return None


@pytest.fixture(scope="session")
def offline_build() -> Iterator[Build]:
    """`make image-offline` once per session; the image is removed again at the end."""
    reason = _why_no_build()
    if reason:
        pytest.skip(reason)
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / "make-image-offline.log"
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as handle:
        result = subprocess.run(
            ["make", "-C", str(REPO), "image-offline", f"PYTHON={sys.executable}", f"OFFLINE_IMAGE={IMAGE}"],
            stdout=handle,
            stderr=subprocess.STDOUT,
            timeout=540,
        )
    seconds = time.monotonic() - started
    tail = log.read_text(encoding="utf-8")[-4000:]
    assert result.returncode == 0, f"make image-offline failed:\n{tail}"
    tarballs = sorted((REPO / "build").glob("tuwen-wheelhouse-*.tar.gz"), key=lambda p: p.stat().st_mtime)
    assert tarballs, "make image-offline did not leave the wheelhouse tarball"
    (OUT / "build-seconds.txt").write_text(f"{seconds:.1f}\n", encoding="utf-8")
    try:
        yield Build(IMAGE, seconds, tarballs[-1])
    finally:
        _podman("rmi", "-f", IMAGE, check=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def start_container(offline_build: Build) -> Iterator[Callable[..., str]]:
    """Start the image detached on `data` (mounted at /data); every container is removed afterwards."""
    names: list[str] = []

    def start(data: Path, env: dict[str, str]) -> str:
        name = f"tuwen-test-{os.getpid()}-{len(names)}"
        names.append(name)
        env_flags = [flag for key, value in env.items() for flag in ("-e", f"{key}={value}")]
        _podman(
            "run", "-d", "--name", name, *RUN_FLAGS, *env_flags, "-v", f"{data}:/data", offline_build.image
        )
        return name

    yield start
    for name in names:
        _podman("rm", "-f", "-t", "0", name, check=False)


def _wait_healthy(name: str, port: int, timeout: float = 120) -> dict[str, object]:
    def healthy() -> dict[str, object] | None:
        state = _podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
        assert state == "true", f"the container stopped:\n{_podman('logs', name).stderr[-3000:]}"
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None  # type: ignore[no-any-return]

    return wait_until(healthy, timeout, interval=0.5)  # type: ignore[return-value]


def _stop_with_sigterm(name: str) -> tuple[int, str]:
    _podman("kill", "--signal", "TERM", name)
    code = int(_podman("wait", name, timeout=90).stdout.strip())
    logs = _podman("logs", name)
    return code, logs.stdout + logs.stderr


@pytest.mark.slow
@slow
def test_the_cpu_image_is_under_1_gb_without_torch_and_declares_how_to_run_it(offline_build: Build) -> None:
    info = json.loads(_podman("image", "inspect", offline_build.image).stdout)[0]
    assert info["Size"] < ONE_GB, f"{info['Size'] / 1e6:.0f} MB"
    config = info["Config"]
    assert info["Healthcheck"]["Test"] == ["CMD", "tuwen", "health"]
    assert config["StopSignal"] == "SIGTERM"
    assert "8080/tcp" in config["ExposedPorts"] and "/data" in config["Volumes"]
    assert config["Entrypoint"] == ["tuwen-entrypoint"] and config["Cmd"] == ["serve"]
    probe = (
        "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'transformers')))"
    )
    no_torch = _podman(
        "run", "--rm", *RUN_FLAGS, "--entrypoint", "/opt/tuwen/bin/python", offline_build.image, "-c", probe
    )
    assert no_torch.returncode == 0


@pytest.mark.slow
@slow
def test_the_container_answers_a_scan_in_the_volume_and_stops_cleanly_on_sigterm(
    start_container: Callable[..., str], tmp_path: Path, scan_bytes: Callable[..., bytes]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    port = _free_port()
    name = start_container(
        data, {"TUWEN_HTTP__PORT": str(port), "USERMAP_UID": "1234", "USERMAP_GID": "2345"}
    )
    body = _wait_healthy(name, port)
    assert body["backend"] == "ocr" and body["status"] == "healthy"
    assert _podman("healthcheck", "run", name).returncode == 0  # the image's own HEALTHCHECK: `tuwen health`
    # tuwen itself is PID 1 (the entrypoint exec'd it), so SIGTERM reaches its stop path directly.
    cmdline = _podman("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert "serve" in cmdline and any(part.endswith("tuwen") for part in cmdline)

    inbox = data / "inbox"  # made by the entrypoint, as the mapped user
    assert (inbox.stat().st_uid, inbox.stat().st_gid) == (1234, 2345)
    scan = inbox / "scan.jpg"
    scan.write_bytes(scan_bytes(["区档案馆 第一卷", "Box 7"]))
    sidecar = scan.with_name("scan.jpg.json")
    wait_until(lambda: sidecar.exists() and scan.with_name("scan.jpg.xmp").exists(), timeout=60)
    record = json.loads(sidecar.read_text(encoding="utf-8"))
    assert record["status"] == "done" and "区档案馆" in record["answer"]
    assert sidecar.stat().st_uid == 1234 and (data / "tuwen.sqlite3").stat().st_uid == 1234

    backup = _podman("exec", "-u", "tuwen", name, "tuwen", "backup", "/data/backups/")
    assert backup.returncode == 0, backup.stderr
    copies = list((data / "backups").glob("tuwen-*.sqlite3"))
    assert len(copies) == 1 and "jobs: 1" in backup.stdout and copies[0].stat().st_uid == 1234

    code, logs = _stop_with_sigterm(name)
    assert code == 0, logs[-3000:]
    assert "stopped cleanly" in logs and "Traceback" not in logs


@pytest.mark.slow
@slow
def test_a_config_in_the_volume_replaces_the_image_default(
    start_container: Callable[..., str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    (data / "scans").mkdir(parents=True)
    port = _free_port()
    (data / "config.toml").write_text(
        f'[storage]\ndata_dir = "/data"\n[http]\nhost = "127.0.0.1"\nport = {port}\n'
        '[[watch]]\npath = "/data/scans"\nname = "scans"\n',
        encoding="utf-8",
    )
    name = start_container(data, {})  # no USERMAP_*: the image's 1000:1000
    body = _wait_healthy(name, port)
    watches = [c["name"] for c in body["components"]]  # type: ignore[attr-defined]
    assert "watch:scans" in watches and "watch:inbox" not in watches
    assert _podman("healthcheck", "run", name).returncode == 0  # follows the port in /data/config.toml
    assert data.stat().st_uid == 1000
    code, logs = _stop_with_sigterm(name)
    assert code == 0, logs[-3000:]


@pytest.mark.slow
@slow
def test_the_wheelhouse_tarball_installs_tuwen_without_an_index(offline_build: Build, tmp_path: Path) -> None:
    with tarfile.open(offline_build.tarball) as archive:
        archive.extractall(tmp_path, filter="data")
    install = tmp_path / "tuwen-wheelhouse" / "install.sh"
    venv = tmp_path / "venv"
    # No pip config either (this machine's has extra local indexes): only the wheels in the tarball count.
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PYTHON": sys.executable}
    env.pop("PIP_FIND_LINKS", None)
    result = subprocess.run(
        ["sh", str(install), str(venv)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    version = subprocess.run([str(venv / "bin" / "tuwen"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("tuwen ")
    assert not (venv / "lib" / "python3.11" / "site-packages" / "torch").exists()


def test_the_image_default_config_listens_everywhere_and_watches_the_volume() -> None:
    config = load_config(REPO / "docker" / "config.toml")
    assert (config.http.host, config.http.port) == ("0.0.0.0", 8080)
    assert config.storage.data_dir == Path("/data") and config.db_path == Path("/data/tuwen.sqlite3")
    assert [(w.path, w.polling) for w in config.watch] == [(Path("/data/inbox"), False)]


def test_compose_runs_the_cpu_service_by_default_and_the_others_only_by_profile() -> None:
    services = yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))["services"]
    assert [name for name, service in services.items() if not service.get("profiles")] == ["tuwen"]
    tuwen = services["tuwen"]
    assert tuwen["restart"] == "unless-stopped" and tuwen["volumes"] == ["./data:/data"]
    assert tuwen["ports"] == ["127.0.0.1:8080:8080"] and tuwen["hostname"] == "tuwen"
    assert tuwen["stop_grace_period"] == "90s"  # > 10 s HTTP + 10 s per watch + 30 s for the job in hand
    gpu = services["tuwen-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["target"] == "gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert any(volume.endswith(":/models:ro") for volume in gpu["volumes"])
    assert services["tuwen-vlm"]["profiles"] == services["ollama"]["profiles"] == ["cpu-vlm"]
    assert services["tuwen-vlm"]["environment"]["TUWEN_OPENAI__MODEL"] == "qwen2.5vl:3b"


def test_every_tuwen_variable_compose_sets_is_a_real_config_key() -> None:
    services = yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))["services"]
    names = {key for service in services.values() for key in service.get("environment", {})}
    tuwen_keys = sorted(name for name in names if name.startswith("TUWEN_"))
    assert tuwen_keys
    for name in tuwen_keys:
        table, key = name.removeprefix("TUWEN_").lower().split("__")
        assert key in Config.model_fields[table].annotation.model_fields, name  # type: ignore[union-attr]
