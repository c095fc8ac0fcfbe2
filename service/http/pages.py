"""The people-facing pages: the web UI at `/`, the museum kiosk and the hall-screen feed.

- `GET /`             ask / history / review / reports (FULL scope; without it, when a key is set → /login)
- `GET /jobs/{id}`    one job's own page: pages with OCR boxes, answer, review, re-run (FULL scope, like /)
- `GET /kiosk`        the tablet page (KIOSK scope; its token travels in the URL)
- `GET /feed`         the hall screen (FEED scope); its SSE and thumbnails live in `feed.py`
- `GET /api/config/kiosk`, `GET /api/i18n`, `GET /static/<file>`

The pages are plain HTML files in `static/` with one ES module each and no inline script, so a strict
Content-Security-Policy (`script-src 'self'`) can forbid everything else: model output and every other
server-provided string is untrusted and the scripts only ever put it into the DOM as text. The pages call the
same public API as any other client (`/v1/chat/completions`, `/api/jobs…`); nothing here answers questions.
A page opened with a login session carries the session's CSRF token as `<body data-csrf>` and every staff
page the caller's role as `<body data-role>` (viewer, reviewer, admin), and the scripts
send it back in `X-CSRF-Token` with every state-changing call (see `auth.py`). Logging in and out is in
`login.py`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from service.http import feed
from service.http.auth import Scope, require
from service.http.context import HttpContext
from service.http.errors import ApiError
from service.messages import all_codes, msg

STATIC_DIR = Path(__file__).with_name("static")

# `img-src blob:` lets the ask and kiosk pages preview the visitor's photo without uploading it first;
# `data:` is not needed and stays off. No inline script or style anywhere, so none is allowed.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # The kiosk and feed URLs carry their token: never hand it to another site in a Referer.
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
STATIC_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
STATIC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(js|css|svg|png)$")


def page_response(
    name: str,
    *,
    status: int = 200,
    body_attrs: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """One of the HTML files in `static/`, with the page security headers (plus `headers`).

    `body_attrs` become `data-*` attributes of `<body>`; they carry server-side state the script needs
    (whether a key is set, a failed login, the CSRF token) and are fixed words or hex, never user data.
    """
    html = (STATIC_DIR / name).read_text(encoding="utf-8")
    if body_attrs:
        attrs = "".join(f' data-{key}="{value}"' for key, value in body_attrs.items())
        html = html.replace("<body", "<body" + attrs, 1)
    return HTMLResponse(html, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})


def i18n_catalogue() -> dict[str, Any]:
    """Every `ui_*` message in both languages, for the pages' scripts."""
    codes = [code for code in all_codes() if code.startswith("ui_")]
    return {
        "default": "zh",
        "messages": {
            "zh": {code: msg(code).zh for code in codes},
            "en": {code: msg(code).en for code in codes},
        },
    }


def build_router(ctx: HttpContext) -> APIRouter:
    """The pages, their static files and the small JSON they need; includes the feed's router."""
    router = APIRouter()
    auth = ctx.auth
    config = ctx.config

    def csrf_attrs(request: Request) -> dict[str, str]:
        session = auth.session_of(request) if auth.enabled else None
        return {"csrf": session.csrf_token} if session is not None else {}

    def staff_page(request: Request, name: str) -> Response:
        # People without a session are sent to /login when a key is set.
        if not auth.allows(request, Scope.FULL):
            return RedirectResponse("/login", status_code=303)
        # `data-role` lets the scripts hide what the role cannot use; the API checks it either way.
        attrs = {"auth": "on" if auth.enabled else "off", **auth.page_attrs(request)}
        return page_response(name, body_attrs=attrs)

    @router.get("/", include_in_schema=False)
    def index(request: Request) -> Response:
        """The web UI: ask, history, review, reports."""
        return staff_page(request, "index.html")

    @router.get("/jobs/{job_id:int}", include_in_schema=False)
    def job_page(request: Request, job_id: int) -> Response:
        """One job's own page; its script reads the job from `GET /api/jobs/{id}`."""
        return staff_page(request, "job.html")

    @router.get("/kiosk", include_in_schema=False, dependencies=[Depends(require(auth, Scope.KIOSK))])
    def kiosk_page(request: Request) -> Response:
        """The museum tablet page (staff may open it with their session instead of the kiosk token)."""
        return page_response("kiosk.html", body_attrs=csrf_attrs(request))

    @router.get("/feed", include_in_schema=False, dependencies=[Depends(require(auth, Scope.FEED))])
    def feed_page() -> Response:
        """The hall-screen page."""
        return page_response("feed.html")

    @router.get("/api/config/kiosk", dependencies=[Depends(require(auth, Scope.KIOSK))])
    def kiosk_config() -> dict[str, Any]:
        """What the kiosk page shows (in Chinese, and in English for a visitor who switches) and how long it
        waits before clearing itself."""
        kiosk = config.kiosk
        return {
            "title": kiosk.title,
            "presets": list(kiosk.presets),
            "title_en": kiosk.title_en,
            "presets_en": list(kiosk.presets_en),
            "idle_seconds": kiosk.idle_seconds,
            "max_turns": kiosk.max_turns,
        }

    @router.get("/api/i18n")
    def i18n() -> JSONResponse:
        """The pages' text in Chinese and English (public: it holds nothing but the catalogue)."""
        return JSONResponse(i18n_catalogue(), headers={"Cache-Control": "no-cache"})

    @router.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        """A page's script, style sheet or icon; only plain file names directly in `static/`."""
        path = STATIC_DIR / name
        if not STATIC_NAME.match(name) or not path.is_file():
            raise ApiError(404, msg("api_not_found", what=f"/static/{name}"))
        # no-cache = revalidate every time (cheap on a LAN) so an upgrade never mixes old and new scripts.
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        return FileResponse(path, media_type=STATIC_TYPES[path.suffix], headers=headers)

    router.include_router(feed.build_router(ctx))
    return router
