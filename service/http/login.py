"""Logging in and out of the web UI.

- `GET /login`   the form: `username` and `password` (straight to / when there is neither a key nor an
                 account, or the session is still valid)
- `POST /login`  checks a name and password (an account), or the key alone (`username` empty and the key as
                 `password`; the older field `key` is still read), throttled per address and per account
                 (`throttle.py`); on success opens a server-side session (`auth.py`, `db/sessions.py`) and
                 sets its HttpOnly, SameSite=Lax cookie. The try that fills a throttle window is written to
                 the audit log (`login.locked`), once per lockout
- `GET /logout`  a page that asks, with a button that POSTs; a GET never ends a session, so a link or an
                 image on another page cannot log anyone out
- `POST /logout` deletes the session's row, with the same cross-site check as the API (own `Origin`, or the
                 session's CSRF token as the form field `csrf` or the `X-CSRF-Token` header)

The login form needs no CSRF token (nothing authenticates it but what is typed), but with named accounts
another site could log a visitor into the attacker's own account and have their reviews recorded under it:
a login whose `Origin` is another site's (or `null`) is refused; the login page is served with
`Referrer-Policy: same-origin` so that its own form sends its real origin. An unknown name costs the same
time as a wrong password.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from db.audit import Action, AuditLog
from db.models import User
from db.users import name_key
from service.http.auth import SESSION_COOKIE, Auth, Scope, forgery, same_origin
from service.http.context import HttpContext
from service.http.errors import ApiError
from service.http.pages import page_response
from service.http.throttle import LoginThrottle
from service.messages import msg

LOGIN_FAIL_DELAY = 0.5  # seconds; slows guessing without bothering a person who mistyped
FORM_MAX_BODY = 4096  # bytes; the forms have two fields
# The pages send no Referer at all, which makes a browser send `Origin: null` with a form POST; the login
# page sends its own origin to itself (and still nothing to other sites), so the check above can tell.
LOGIN_HEADERS = {"Referrer-Policy": "same-origin"}
KEY_ACCOUNT = "key"  # the throttle's account for the single-key login (named accounts: "user:<name key>")


async def read_form(request: Request) -> dict[str, str]:
    """A tiny urlencoded form, read with a cap so a hostile client cannot make us buffer an endless body.

    Parsed here rather than pulling in python-multipart for one field.
    """
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_MAX_BODY:
            break
    fields = parse_qs(body[:FORM_MAX_BODY].decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in fields.items()}


def client_address(request: Request) -> str:
    """The peer's address as the server sees it (behind a proxy: the proxy's, unless uvicorn is told to
    trust its forwarded headers)."""
    return request.client.host if request.client else ""


async def _check(
    auth: Auth, throttle: LoginThrottle, name: str, secret: str, who: tuple[str, str]
) -> tuple[bool, User | None]:
    """(whether the name and password, or the key, are right; the account). Wrong tries are counted."""
    if not name:
        ok = auth.key_set and auth.is_key(secret)
        if not ok:
            throttle.failed(*who)
        return ok, None
    throttle.failed(*who)  # counted now (the hash takes a while); taken back if the password is right
    user = await run_in_threadpool(auth.check_account, name, secret)
    if user is not None:
        throttle.forgive(*who)
    return user is not None, user


def _signed_in(request: Request, auth: Auth, cookie: str) -> Response:
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(auth.session_lifetime.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


def build_router(ctx: HttpContext) -> APIRouter:
    """/login and /logout."""
    router = APIRouter()
    auth = ctx.auth
    throttle = LoginThrottle()
    audit = AuditLog(ctx.store)

    def signed_out() -> Response:
        return RedirectResponse("/login" if auth.enabled else "/", status_code=303)

    @router.get("/login", include_in_schema=False)
    def login_page(request: Request) -> Response:
        """The login form (or straight to / when nothing is needed or the session is already valid)."""
        if not auth.enabled or auth.allows(request, Scope.FULL):
            return RedirectResponse("/", status_code=303)
        return page_response("login.html", body_attrs=form_attrs(), headers=LOGIN_HEADERS)

    def form_attrs(**extra: str) -> dict[str, str]:
        # Which ways in exist, so the page shows the name field only when there are accounts.
        accounts = "on" if auth.accounts_exist() else "off"
        return {"accounts": accounts, "key": "on" if auth.key_set else "off", **extra}

    @router.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        """Check the typed name and password (or the key); on success open a session and go to /."""
        if not auth.enabled:
            return RedirectResponse("/", status_code=303)
        if request.headers.get("origin") and not same_origin(request):
            raise ApiError(403, msg("api_csrf_refused"))
        form = await read_form(request)
        name = form.get("username", "").strip()
        secret = form.get("password", "") or form.get("key", "").strip()
        address = client_address(request)
        account = f"user:{name_key(name)}" if name else KEY_ACCOUNT
        # Checked and counted with no await in between, so a burst of parallel tries cannot all slip in
        # before the first of them is counted.
        wait = throttle.retry_after(address, account)
        if wait is not None:
            attrs = form_attrs(login="throttled", retry=str(wait))
            headers = {**LOGIN_HEADERS, "Retry-After": str(wait)}
            return page_response("login.html", status=429, body_attrs=attrs, headers=headers)
        ok, user = await _check(auth, throttle, name, secret, (address, account))
        if not ok:
            if throttle.retry_after(address, account) is not None:  # this try filled the window
                await run_in_threadpool(_record_lockout, name or KEY_ACCOUNT, address)
            await asyncio.sleep(LOGIN_FAIL_DELAY)
            attrs = form_attrs(login="wrong")
            return page_response("login.html", status=401, body_attrs=attrs, headers=LOGIN_HEADERS)
        cookie = await run_in_threadpool(auth.start_session, address, user)
        return _signed_in(request, auth, cookie)

    def _record_lockout(name: str, address: str) -> None:
        details = {"limit": throttle.limit, "window_seconds": throttle.window}
        audit.record(name[:64], Action.LOGIN_LOCKED, name[:64], details, address=address)

    @router.get("/logout", include_in_schema=False)
    def logout_page(request: Request) -> Response:
        """Ask before logging out; the button POSTs with the session's CSRF token."""
        session = auth.session_of(request) if auth.enabled else None
        if session is None:
            return signed_out()
        return page_response("logout.html", body_attrs={"csrf": session.csrf_token})

    @router.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        """End the session server-side and forget its cookie."""
        session = await run_in_threadpool(auth.session_of, request) if auth.enabled else None
        if session is not None:
            form = await read_form(request)
            forged = forgery(request, session, json_only=False, form_token=form.get("csrf", ""))
            if forged is not None:
                raise ApiError(403, forged)
            await run_in_threadpool(auth.end_session, session)
        response = signed_out()
        response.delete_cookie(
            SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=request.url.scheme == "https"
        )
        return response

    return router
