"""Accounts in the browser: register, sign in, sign out."""

from __future__ import annotations

import math
import re
import secrets

from hostd import db
from hostd.auth import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, Busy, session_token_hash
from hostd.db import User
from hostd.handlers.base import SESSION_COOKIE, SESSION_DAYS, BaseHandler, Refusal

BUSY_MESSAGE = "The server is busy checking other passwords. Try again in a few seconds."
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def safe_next(target: str | None) -> str:
    """Only a local path: `//host` and `/\\host` would leave the site (CWE-601), and browsers
    drop tabs and newlines from URLs, so `/<tab>/host` would too."""
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target
        and target.isprintable()  # no tabs, newlines or other controls
    ):
        return target
    return "/"


def check_new_account(name: str, password: str, confirm: str) -> str | None:
    """What is wrong with a registration form, or None."""
    if not NAME_PATTERN.fullmatch(name):
        return (
            "A name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit."
        )
    return check_password(password, confirm)


def check_password(password: str, confirm: str) -> str | None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        return f"A password has at least {MIN_PASSWORD_LENGTH} characters."
    if password != confirm:
        return "The two passwords differ."
    return None


class SessionMixin(BaseHandler):
    async def start_session(self, user: User) -> None:
        token = secrets.token_urlsafe(32)
        await db.insert_session(self.db, token_hash=session_token_hash(token), user_id=user.id)
        self.set_private_cookie(SESSION_COOKIE, token, expires_days=SESSION_DAYS)


class LoginHandler(SessionMixin):
    def get(self) -> None:
        self.render_page("accounts/login.html", error=None, name="", next=self.next_url())

    def next_url(self) -> str:
        return safe_next(self.get_argument("next", "/"))

    async def post(self) -> None:
        name = self.get_body_argument("name", "").strip()
        password = self.get_body_argument("password", "")
        keys = (f"name:{name.lower()}", f"addr:{self.request.remote_ip}")
        wait = self.limiter.wait_time(*keys)
        if wait > 0:
            self.set_status(429)
            self.set_header("Retry-After", str(math.ceil(wait)))
            seconds = math.ceil(wait)
            error = (
                f"Too many failed sign-ins. Try again in {seconds} second"
                f"{'' if seconds == 1 else 's'}."
            )
            self.render_page("accounts/login.html", error=error, name=name, next=self.next_url())
            return
        # Counted as a failure before the slow check, so that attempts sent in parallel
        # are counted too; a success clears it.
        self.limiter.failed(*keys)
        user = await db.get_user(self.db, name=name)
        try:
            ok, new_hash = await self.auth.check_password(user, password)
        except Busy:
            self.set_status(503)
            self.set_header("Retry-After", "5")
            error = BUSY_MESSAGE
            self.render_page("accounts/login.html", error=error, name=name, next=self.next_url())
            return
        if not ok or user is None:
            self.set_status(401)
            error = "Wrong name or password."
            self.render_page("accounts/login.html", error=error, name=name, next=self.next_url())
            return
        self.limiter.succeeded(*keys)
        if new_hash:
            await db.update_password(
                self.db, user_id=user.id, password_hash=new_hash, end_sessions=False
            )
        await self.start_session(user)
        self.redirect(self.next_url(), status=303)


class RegisterHandler(SessionMixin):
    async def prepare(self) -> None:
        await super().prepare()
        if self.config.registration != "open":
            raise Refusal(
                403,
                "Registration is closed here. The admin can create accounts with `hostd user add`.",
            )

    def get(self) -> None:
        self.render_page("accounts/register.html", error=None, name="")

    async def post(self) -> None:
        name = self.get_body_argument("name", "").strip()
        password = self.get_body_argument("password", "")
        error = check_new_account(name, password, self.get_body_argument("confirm", ""))
        user = None
        status = 400
        if error is None:
            try:
                user = await db.insert_user(
                    self.db, name=name, password_hash=await self.auth.hash_password(password)
                )
            except db.NameTaken:
                error = "That name is taken."
            except Busy:
                status, error = 503, BUSY_MESSAGE
                self.set_header("Retry-After", "5")
        if user is None:
            self.set_status(status)
            self.render_page("accounts/register.html", error=error, name=name)
            return
        await self.start_session(user)
        self.redirect("/", status=303)


class LogoutHandler(BaseHandler):
    async def post(self) -> None:
        token = self.get_signed_cookie(SESSION_COOKIE, max_age_days=SESSION_DAYS)
        if token:
            await db.delete_session(self.db, token_hash=session_token_hash(token.decode()))
        self.clear_cookie(SESSION_COOKIE)
        self.redirect_after_post("/")


routes = [
    (r"/login", LoginHandler),
    (r"/register", RegisterHandler),
    (r"/logout", LogoutHandler),
]
