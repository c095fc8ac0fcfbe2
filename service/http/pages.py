"""The people-facing pages: the web UI at `/`, the museum kiosk, the hall-screen feed, and logging in.

- `GET /`             ask / history / review (FULL scope; without it, when a key is set → /login)
- `GET|POST /login`   takes the key once and sets the session cookie; `GET /logout` clears it
- `GET /kiosk`        the tablet page (KIOSK scope; its token travels in the URL)
- `GET /feed`         the hall screen (FEED scope); its SSE and thumbnails live in `feed.py`
- `GET /api/config/kiosk`, `GET /api/i18n`, `GET /static/<file>`

The pages are plain HTML files in `static/` with one ES module each and no inline script, so a strict
Content-Security-Policy (`script-src 'self'`) can forbid everything else: model output and every other
server-provided string is untrusted and the scripts only ever put it into the DOM as text. The pages call the
same public API as any other client (`/v1/chat/completions`, `/api/jobs…`); nothing here answers questions.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from service.http import feed
from service.http.auth import SESSION_COOKIE, Scope, require
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

SESSION_MAX_AGE = 30 * 24 * 3600  # staff stay logged in for a month; rotating the key ends every session
LOGIN_FAIL_DELAY = 0.5  # seconds; slows guessing without bothering a person who mistyped
LOGIN_MAX_BODY = 4096  # bytes; the form has one field


def page_response(name: str, *, status: int = 200, body_attrs: dict[str, str] | None = None) -> HTMLResponse:
    """One of the HTML files in `static/`, with the page security headers.

    `body_attrs` become `data-*` attributes of `<body>`; they carry server-side state the script needs
    (whether a key is set, a failed login) and are fixed words, never user data.
    """
    html = (STATIC_DIR / name).read_text(encoding="utf-8")
    if body_attrs:
        attrs = "".join(f' data-{key}="{value}"' for key, value in body_attrs.items())
        html = html.replace("<body", "<body" + attrs, 1)
    return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)


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


async def _read_form(request: Request) -> dict[str, str]:
    # A tiny urlencoded form: parsed here rather than pulling in python-multipart for one field, and read
    # with a cap so a hostile client cannot make us buffer an endless body.
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > LOGIN_MAX_BODY:
            break
    fields = parse_qs(body[:LOGIN_MAX_BODY].decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in fields.items()}


def build_router(ctx: HttpContext) -> APIRouter:
    """The pages, their static files and the small JSON they need; includes the feed's router."""
    router = APIRouter()
    auth = ctx.auth
    config = ctx.app.config

    def api_key() -> str:
        return config.http.api_key.get_secret_value()

    def auth_state() -> dict[str, str]:
        return {"auth": "on" if auth.enabled else "off"}

    @router.get("/", include_in_schema=False)
    def index(request: Request) -> Response:
        """The web UI; people without a session are sent to /login when a key is set."""
        if not auth.allows(request, Scope.FULL):
            return RedirectResponse("/login", status_code=303)
        return page_response("index.html", body_attrs=auth_state())

    @router.get("/login", include_in_schema=False)
    def login_page(request: Request) -> Response:
        """The key form (or straight to / when no key is set or the session is already valid)."""
        if not auth.enabled or auth.allows(request, Scope.FULL):
            return RedirectResponse("/", status_code=303)
        return page_response("login.html")

    @router.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        """Check the typed key; on success set the HttpOnly session cookie and go to /."""
        if not auth.enabled:
            return RedirectResponse("/", status_code=303)
        typed = (await _read_form(request)).get("key", "").strip()
        if not typed or not hmac.compare_digest(typed.encode(), api_key().encode()):
            await asyncio.sleep(LOGIN_FAIL_DELAY)
            return page_response("login.html", status=401, body_attrs={"login": "wrong"})
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            auth.session_value(),
            max_age=SESSION_MAX_AGE,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @router.get("/logout", include_in_schema=False)
    def logout() -> Response:
        """Forget the session cookie."""
        response = RedirectResponse("/login" if auth.enabled else "/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
        return response

    @router.get("/kiosk", include_in_schema=False, dependencies=[Depends(require(auth, Scope.KIOSK))])
    def kiosk_page() -> Response:
        """The museum tablet page."""
        return page_response("kiosk.html")

    @router.get("/feed", include_in_schema=False, dependencies=[Depends(require(auth, Scope.FEED))])
    def feed_page() -> Response:
        """The hall-screen page."""
        return page_response("feed.html")

    @router.get("/api/config/kiosk", dependencies=[Depends(require(auth, Scope.KIOSK))])
    def kiosk_config() -> dict[str, Any]:
        """What the kiosk page shows and how long it waits before clearing itself."""
        kiosk = config.kiosk
        return {
            "title": kiosk.title,
            "presets": list(kiosk.presets),
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
