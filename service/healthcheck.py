"""`tuwen health`: ask the running service's `/health` and exit 0 (healthy) or 1 (anything else).

It exists for container health checks (the image's `HEALTHCHECK`, compose's `healthcheck:`): the slim
image has no curl, and a hand-written `python3 -c` one-liner would only know the default port, not the
one set in `/data/config.toml` or `TUWEN_HTTP__PORT`. This reads the same config as `tuwen serve`, so it
asks wherever the service listens. Only the standard library is used: it runs every 30 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

from service.config import Config
from service.messages import msg

TIMEOUT_SECONDS = 5.0


def health_url(config: Config) -> str:
    """Where `tuwen serve` with this config answers `/health`, as seen from the same machine."""
    host = config.http.host.strip("[]")
    # A wildcard address is where the service listens, not where anyone connects.
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.http.port}/health"


def health_command(config: Config, args: argparse.Namespace) -> int:
    """`tuwen health`: one line saying healthy or why not; exit 0 only on HTTP 200."""
    if not config.http.enabled:
        print(str(msg("health_http_disabled")), file=sys.stderr)
        return 1
    url = health_url(config)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310 - our own URL
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:  # 503 and friends carry the reason in their body
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        print(str(msg("health_unreachable", url=url, reason=reason)), file=sys.stderr)
        return 1
    if status == 200:
        print(str(msg("health_ok", url=url)))
        return 0
    print(str(msg("health_unhealthy", status=status, reason=_reason(body))), file=sys.stderr)
    return 1


def _reason(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(data, dict):
        return str(data.get("error") or data.get("status") or "")
    return ""
