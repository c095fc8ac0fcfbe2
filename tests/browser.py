"""How the tests drive Debian's chromium through Playwright (never a downloaded browser), and the helpers
every page test shares: a watched page, rendered scans as file payloads (the `browser` fixture, one
chromium per module, is in conftest.py)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from bench.render import render_text_image

CHROMIUM = "/usr/bin/chromium"
# Root in a container needs --no-sandbox; the rest keep chromium off the (closed) network at start-up.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def scan_png(lines: list[str]) -> dict[str, Any]:
    """A rendered scan as a Playwright file payload."""
    buffer = io.BytesIO()
    render_text_image(lines, size=(760, 90 + 60 * len(lines)), font_size=32).save(buffer, "PNG")
    return {"name": "scan.png", "mimeType": "image/png", "buffer": buffer.getvalue()}


def screenshot(page: Any, name: str) -> None:
    """Keep a screenshot when TUWEN_SCREENSHOTS names a folder (for people, not assertions)."""
    folder = os.environ.get("TUWEN_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"tuwen-{name}.png"), full_page=True, animations="disabled")


class Watched:
    """A page plus everything it did that a test may want to refuse: script errors and dialogs."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)
        page.on("dialog", self._dialog)

    def _console(self, message: Any) -> None:
        # A blocked script or style means the page broke its own Content-Security-Policy.
        if "Content Security Policy" in message.text:
            self.errors.append(message.text)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()


def open_page(watched: Watched, url: str) -> Any:
    """Go to a page and wait until its script has finished setting up."""
    page = watched.page
    page.goto(url)
    page.wait_for_selector("body.ready")
    return page
