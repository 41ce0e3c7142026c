"""The /api page: the API's documentation and, for a signed-in user, their keys."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

import tornado.web

from hostd import clients, db, openapi, retention
from hostd.auth import Busy
from hostd.db import ApiKey
from hostd.handlers.base import BaseHandler, Refusal

MAX_LABEL_LENGTH = 100


NEW_KEY_COOKIE = "hostd_new_key"
REVEAL_SECONDS = 120.0


class KeyReveals:
    """New keys waiting to be shown once, on the page a plain form post redirects to.

    Without JavaScript, answering the POST with the key would let a reload post again and
    mint another; so the POST stores the key here for a moment under a random nonce (sent
    back in a cookie) and redirects, and the next GET takes it out. Bounded, short-lived,
    in memory only: the database never sees the key.
    """

    def __init__(self, max_entries: int = 256, clock: Callable[[], float] = time.monotonic):
        self._entries: OrderedDict[str, tuple[int, str, float]] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock

    def put(self, user_id: int, token: str) -> str:
        now = self._clock()
        while self._entries and (
            len(self._entries) >= self._max_entries or next(iter(self._entries.values()))[2] < now
        ):
            self._entries.popitem(last=False)
        nonce = secrets.token_urlsafe(18)
        self._entries[nonce] = (user_id, token, now + REVEAL_SECONDS)
        return nonce

    def take(self, nonce: str, user_id: int) -> str | None:
        """The key, once, to the user who made it, within its time."""
        entry = self._entries.get(nonce)
        if entry is None or entry[0] != user_id:
            return None
        del self._entries[nonce]
        return entry[1] if entry[2] >= self._clock() else None


class ApiPageHandler(BaseHandler):
    async def get(self) -> None:
        new_key = None
        nonce = self.get_signed_cookie(NEW_KEY_COOKIE, max_age_days=1)
        if nonce is not None:
            self.clear_cookie(NEW_KEY_COOKIE, path="/api")
            if self.current_user is not None:
                new_key = self.reveals.take(nonce.decode(), self.current_user.id)
        if new_key is not None:
            self.set_header("Cache-Control", "no-store")
        await self.render_keys(new_key=new_key)

    @property
    def reveals(self) -> KeyReveals:
        return self.settings["hostd_reveals"]

    async def render_keys(self, *, new_key: str | None = None, error: str | None = None) -> None:
        keys = (
            await db.list_api_keys(self.db, user_id=self.current_user.id)
            if self.current_user
            else []
        )
        self.render_page(
            "api/page.html",
            fragment="api_keys",
            keys=keys,
            new_key=new_key,
            error=error,
            sharex_name=clients.sharex_file_name(self.public_url()),
            sharex_with_key=clients.sharex_config(self.public_url(), new_key) if new_key else None,
            retention=retention.describe(self.config),
        )


class ApiKeyListHandler(ApiPageHandler):
    """POST makes a key, shown once: in the htmx answer, or on the page a plain form is
    redirected to (see KeyReveals). Never cached, never stored in clear."""

    @tornado.web.authenticated
    async def post(self) -> None:
        assert self.current_user is not None
        label = self.get_body_argument("label", "").strip()
        if len(label) > MAX_LABEL_LENGTH:
            self.set_status(400)
            await self.render_keys(error=f"A label has at most {MAX_LABEL_LENGTH} characters.")
            return
        try:
            minted = await self.auth.mint_key()
        except Busy:
            self.set_status(503)
            await self.render_keys(error="The server is busy. Try again in a few seconds.")
            return
        try:
            await db.insert_api_key(
                self.db,
                user_id=self.current_user.id,
                key_id=minted.key_id,
                secret_hash=minted.secret_hash,
                label=label,
                max_keys=self.config.max_keys,
            )
        except db.TooManyKeys as exc:
            self.set_status(409)
            await self.render_keys(
                error=f"You hold {exc.args[0]} keys, the most allowed here. Invalidate one first."
            )
            return
        if self.is_htmx:
            self.set_header("Cache-Control", "no-store")
            await self.render_keys(new_key=minted.token)
            return
        nonce = self.reveals.put(self.current_user.id, minted.token)
        self.set_private_cookie(NEW_KEY_COOKIE, nonce, path="/api")
        self.redirect("/api", status=303)


class ApiKeyInvalidateHandler(BaseHandler):
    """GET asks for confirmation (the page without JavaScript); POST with confirm=yes acts."""

    async def key_of_user(self, key_id: str) -> ApiKey:
        assert self.current_user is not None
        key = await db.get_api_key(self.db, key_id=key_id)
        if key is None or key.user_id != self.current_user.id:
            raise Refusal(404, "You have no key with this id.")
        return key

    @tornado.web.authenticated
    async def get(self, key_id: str) -> None:
        self.render_page("api/confirm_invalidate.html", key=await self.key_of_user(key_id))

    @tornado.web.authenticated
    async def post(self, key_id: str) -> None:
        key = await self.key_of_user(key_id)
        if self.get_body_argument("confirm", "") != "yes":
            self.render_page("api/confirm_invalidate.html", key=key)
            return
        invalidated = await db.invalidate_api_key(self.db, key_id=key.key_id, user_id=key.user_id)
        assert invalidated is not None
        self.auth.forget_key(invalidated.id)
        if self.is_htmx:
            self.set_header("Vary", "HX-Request")
            self.finish(self.render_string_page("api/_key_row.html", key=invalidated))
        else:
            self.redirect("/api", status=303)


class ShareXConfigHandler(BaseHandler):
    """GET /api/sharex.sxcu: a ShareX uploader for anonymous uploads. (The one with a key is
    offered once, as a data: link beside the new key, so the key is never stored.)"""

    def get(self) -> None:
        name = clients.sharex_file_name(self.public_url())
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="{name}"')
        self.finish(clients.sharex_config(self.public_url()))


class OpenApiHandler(BaseHandler):
    """GET /api/openapi.json: the API's OpenAPI 3.1 description (hostd/openapi.py).

    Public and the same for everyone, so any site may read it (`Access-Control-Allow-Origin`,
    for API explorers); `no-cache` with Tornado's ETag, so a client revalidates with a cheap
    304 and never keeps a description of an older hostd after an upgrade."""

    async def prepare(self) -> None:
        pass  # no session read: the answer is the same for everyone

    def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Access-Control-Allow-Origin", "*")
        self.finish(openapi.document_bytes())


routes = [
    (r"/api", ApiPageHandler),
    (r"/api/openapi\.json", OpenApiHandler),
    (r"/api/sharex\.sxcu", ShareXConfigHandler),
    (r"/api/keys", ApiKeyListHandler),
    (r"/api/keys/([0-9a-f]{16})/invalidate", ApiKeyInvalidateHandler),
]
