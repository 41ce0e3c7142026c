"""Accounts in the browser: register, sign in, sign out, change the password."""

from __future__ import annotations

import math
import secrets
from typing import Any

from hostd import db
from hostd.accounts import new_account_problem, password_problem
from hostd.auth import Busy, session_token_hash
from hostd.db import User
from hostd.handlers.base import SESSION_COOKIE, SESSION_DAYS, BaseHandler, Refusal, signed_in
from hostd.throttle import AddressLimiter

BUSY_MESSAGE = "The server is busy checking other passwords. Try again in a few seconds."
DISABLED_MESSAGE = "This account is disabled. Ask the admin of this server why."


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


def wait_message(what: str, seconds: float) -> str:
    """'Too many failed sign-ins. Try again in 3 seconds.' (or minutes, past two minutes)."""
    count, unit = math.ceil(seconds), "second"
    if count > 120:
        count, unit = math.ceil(seconds / 60), "minute"
    return f"{what} Try again in {count} {unit}{'' if count == 1 else 's'}."


class AccountFormHandler(BaseHandler):
    """The sign-in and registration pages: their form, exact passwords, a new session."""

    template: str

    async def start_session(self, user: User) -> None:
        token = secrets.token_urlsafe(32)
        await db.insert_session(self.db, token_hash=session_token_hash(token), user_id=user.id)
        self.set_private_cookie(SESSION_COOKIE, token, expires_days=SESSION_DAYS)

    def exact_password(self, field: str) -> str:
        """A password field as it was typed. get_body_argument() would strip it and turn
        control characters into spaces, so an account made with `hostd user add` could never
        sign in."""
        values = self.request.body_arguments.get(field)
        try:
            return values[-1].decode("utf-8") if values else ""
        except UnicodeDecodeError:
            raise Refusal(400, "The form was not sent as UTF-8.") from None

    def refuse(self, status: int, error: str, *, wait: float = 0, **context: Any) -> None:
        """Show the form again with what went wrong; a wait becomes Retry-After."""
        self.set_status(status)
        if wait:
            self.set_header("Retry-After", str(math.ceil(wait)))
        self.render_page(self.template, error=error, **context)


class LoginHandler(AccountFormHandler):
    template = "accounts/login.html"

    def get(self) -> None:
        self.render_page(self.template, error=None, name="", next=self.next_url(), done=self.done())

    def done(self) -> str:
        return self.get_query_argument("done", "")

    def next_url(self) -> str:
        return safe_next(self.get_argument("next", "/"))

    async def post(self) -> None:
        name = self.get_body_argument("name", "").strip()
        form: dict[str, Any] = {"name": name, "next": self.next_url(), "done": ""}
        async with self.limiter.attempt(name, self.address) as attempt:
            if attempt.wait:
                error = wait_message("Too many failed sign-ins.", attempt.wait)
                self.refuse(429, error, wait=attempt.wait, **form)
                return
            user = await db.get_user(self.db, name=name)
            try:
                ok, new_hash = await self.auth.check_password(user, self.exact_password("password"))
            except Busy:  # no answer about the password, so the attempt counts nothing
                self.refuse(503, BUSY_MESSAGE, wait=5, **form)
                return
            if not ok or user is None:
                await attempt.failed()
                self.refuse(401, "Wrong name or password.", **form)
                return
            if user.disabled_at is not None:
                # Said only after the right password: to a guesser, the same as any account.
                self.refuse(403, DISABLED_MESSAGE, **form)
                return
            await attempt.succeeded()
        if new_hash:
            await db.update_password(
                self.db, user_id=user.id, password_hash=new_hash, end_sessions=False
            )
        await self.start_session(user)
        self.redirect(self.next_url(), status=303)


class RegisterHandler(AccountFormHandler):
    template = "accounts/register.html"

    async def prepare(self) -> None:
        await super().prepare()
        if self.config.registration != "open":
            raise Refusal(
                403,
                "Registration is closed here. The admin can create accounts with `hostd user add`.",
            )

    @property
    def registrations(self) -> AddressLimiter:
        return self.settings["hostd_registrations"]

    def get(self) -> None:
        self.render_page(self.template, error=None, name="")

    async def post(self) -> None:
        name = self.get_body_argument("name", "").strip()
        password = self.exact_password("password")
        error = new_account_problem(name, password, self.exact_password("confirm"))
        if error is None and await db.get_user(self.db, name=name) is not None:
            error = "That name is taken."  # known before any Argon2 work is spent on it
        if error is not None:
            self.refuse(400, error, name=name)
            return
        user = await self.create_account(name, password)
        if user is not None:
            await self.start_session(user)
            self.redirect("/", status=303)

    async def create_account(self, name: str, password: str) -> User | None:
        """The new account, or None when the page has been answered with why not."""
        wait = self.registrations.take(self.address)
        if wait:
            error = wait_message("Too many new accounts from your address.", wait)
            self.refuse(429, error, wait=wait, name=name)
            return None
        try:
            password_hash = await self.auth.hash_password(password, new_account=True)
            return await db.insert_user(self.db, name=name, password_hash=password_hash)
        except Busy:
            self.registrations.give_back(self.address)  # the server's shortfall, not theirs
            self.refuse(503, BUSY_MESSAGE, wait=5, name=name)
        except db.NameTaken:
            self.refuse(400, "That name is taken.", name=name)
        return None


class AccountHandler(AccountFormHandler):
    """/account: change the password (which signs out every other session), or sign out
    everywhere. The current password is asked for, and counted by the sign-in limiter, so
    that a session left open on a shared computer cannot take the account over."""

    template = "accounts/account.html"

    @signed_in
    def get(self) -> None:
        self.render_page(self.template, error=None, done=self.get_query_argument("done", ""))

    @signed_in
    async def post(self) -> None:
        user = self.current_user
        assert user is not None
        if self.get_body_argument("action", "") == "sign-out-everywhere":
            await db.delete_sessions(self.db, user_id=user.id)
            self.clear_cookie(SESSION_COOKIE)
            self.redirect("/login?done=everywhere", status=303)
            return
        new = self.exact_password("new")
        error = password_problem(new, self.exact_password("confirm"))
        if error is not None:
            self.refuse(400, error, done="")
            return
        async with self.limiter.attempt(user.name, self.address) as attempt:
            if attempt.wait:
                error = wait_message("Too many wrong passwords.", attempt.wait)
                self.refuse(429, error, wait=attempt.wait, done="")
                return
            try:
                ok, _ = await self.auth.check_password(user, self.exact_password("current"))
                new_hash = await self.auth.hash_password(new) if ok else ""
            except Busy:
                self.refuse(503, BUSY_MESSAGE, wait=5, done="")
                return
            if not ok:
                await attempt.failed()
                self.refuse(401, "The current password is wrong.", done="")
                return
            await attempt.succeeded()
        await db.update_password(
            self.db, user_id=user.id, password_hash=new_hash, end_sessions=True
        )
        await self.start_session(user)  # this browser stays signed in; every other is out
        self.redirect("/account?done=password", status=303)


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
    (r"/account", AccountHandler),
]
