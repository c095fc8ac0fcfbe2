"""Make python-wechaty importable on Python 3.11+ without editing site-packages.

Targets the last releases, all from 2022: wechaty 0.10.7, wechaty-puppet 0.4.23, wechaty-puppet-service
0.8.10 (installed by `pip install '.[wechat]'`). Each patch below is applied only when still needed, so a
fixed upstream release would pass through untouched. What breaks, and why each fix is safe:

1. `wechaty.wechaty.WechatyOptions` declares `puppet_options: PuppetOptions = PuppetOptions()`.
   `PuppetOptions` is an `eq=True` dataclass, hence unhashable, and Python 3.11's `dataclasses` refuses an
   unhashable default ("mutable default ... use default_factory"), so `import wechaty` fails. We give
   `PuppetOptions` identity hashing (`object.__hash__`) before `wechaty` is imported; equality is
   unchanged. The one default instance is still shared by every `WechatyOptions()` and `Wechaty()` writes
   the token into it, so callers must always pass their own `PuppetOptions` (bots.wechat_child does).
2. `wechaty.user.url_link` does `from urllib3 import get_host`, removed in urllib3 2.0. Rather than pin
   `urllib3<2` for the whole service (requests and everything else share it), we add the 1.x function,
   rebuilt on `urllib3.util.parse_url`, when it is missing. Only URL-link messages use it.
3. `from pyee import AsyncIOEventEmitter` needs pyee < 12: that one is pinned in the extra (nothing else in
   tuwen uses pyee), not patched.

Also know: importing `wechaty` creates `$CACHE_DIR` (default `./.wechaty`) at once, and wechaty-puppet-service
imports `telnetlib`, which Python 3.13 removed, so the extra works on Python 3.11 and 3.12 only.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# What `load_wechaty` was checked against; other versions are tried all the same.
TARGET_VERSION = "0.10.7"


def _get_host(url: str) -> tuple[str, str | None, int | None]:
    """urllib3 1.x `get_host`: (scheme, host, port), scheme defaulting to http."""
    from urllib3.util import parse_url

    parsed = parse_url(url)
    return parsed.scheme or "http", parsed.hostname, parsed.port


def apply_patches() -> None:
    """Apply the import-time fixes above; idempotent, and a no-op where a patch is not needed."""
    import urllib3

    if not hasattr(urllib3, "get_host"):
        urllib3.get_host = _get_host  # type: ignore[attr-defined]
    from wechaty_puppet.schemas.puppet import PuppetOptions

    if PuppetOptions.__hash__ is None:  # type: ignore[comparison-overlap]
        PuppetOptions.__hash__ = object.__hash__  # type: ignore[assignment]


def load_wechaty() -> ModuleType:
    """Patch, then import and return `wechaty`. Raises ImportError (with the reason) when it cannot load."""
    try:
        apply_patches()
        return importlib.import_module("wechaty")
    except ImportError:
        raise
    except Exception as exc:  # a dataclass ValueError, a changed API: all mean "cannot use wechaty here"
        raise ImportError(f"{type(exc).__name__}: {exc}") from exc
