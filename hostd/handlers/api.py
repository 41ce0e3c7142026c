"""The /api page: the API's documentation and, for a signed-in user, their keys."""

from __future__ import annotations

from hostd import clients, db, openapi, retention
from hostd.auth import (
    Busy,
    new_reveal_token,
    parse_key,
    reveal_token_hash,
    seal_key,
    unseal_key,
)
from hostd.db import ApiKey
from hostd.handlers.base import BaseHandler, Refusal, signed_in

MAX_LABEL_LENGTH = 100


NEW_KEY_COOKIE = "hostd_new_key"
REVEAL_SECONDS = 120


class ApiPageHandler(BaseHandler):
    async def get(self) -> None:
        new_key = None
        token = self.get_signed_cookie(NEW_KEY_COOKIE, max_age_days=1)
        if token is not None:
            self.clear_cookie(NEW_KEY_COOKIE, path="/api")
            if self.current_user is not None:
                new_key = await self.take_new_key(token.decode(), self.current_user.id)
        if new_key is not None:
            self.set_header("Cache-Control", "no-store")
        await self.render_keys(new_key=new_key)

    async def take_new_key(self, token: str, user_id: int) -> str | None:
        """The key waiting for its one showing under this cookie's token (see
        ApiKeyListHandler), taken out of the database; None once shown, or too late."""
        sealed = await db.take_key_reveal(
            self.db, token_hash=reveal_token_hash(token), user_id=user_id, at=self.now()
        )
        return unseal_key(token, sealed) if sealed is not None else None

    async def render_keys(self, *, new_key: str | None = None, error: str | None = None) -> None:
        keys = (
            await db.list_api_keys(self.db, user_id=self.current_user.id)
            if self.current_user
            else []
        )
        parsed = parse_key(new_key) if new_key else None
        key_id = parsed[0] if parsed else None
        self.render_page(
            "api/page.html",
            fragment="api_keys",
            keys=keys,
            new_key=new_key,
            error=error,
            sharex_name=clients.sharex_file_name(self.public_url(), key_id),
            sharex_with_key=clients.sharex_config(self.public_url(), new_key) if new_key else None,
            retention=retention.describe(self.config),
            allow_anonymous=self.config.allow_anonymous,
            upload_errors=openapi.UPLOAD_REFUSALS,
        )


class ApiKeyListHandler(ApiPageHandler):
    """POST makes a key, shown once: in the htmx answer, or on the page a plain form is
    redirected to. Never cached, never stored in clear."""

    @signed_in
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
        # Answering this POST with the key would let a reload post again and mint another:
        # the key waits, sealed, for the next GET (which another process may serve) under a
        # one-time token that only this browser holds.
        token = new_reveal_token()
        await db.insert_key_reveal(
            self.db,
            token_hash=reveal_token_hash(token),
            user_id=self.current_user.id,
            sealed_key=seal_key(token, minted.token),
            expires_at=self.now() + REVEAL_SECONDS,
        )
        self.set_private_cookie(NEW_KEY_COOKIE, token, path="/api")
        self.redirect("/api", status=303)


class ApiKeyInvalidateHandler(BaseHandler):
    """GET asks for confirmation (the page without JavaScript); POST with confirm=yes acts."""

    async def key_of_user(self, key_id: str) -> ApiKey:
        assert self.current_user is not None
        key = await db.get_api_key(self.db, key_id=key_id)
        if key is None or key.user_id != self.current_user.id:
            raise Refusal(404, "You have no key with this id.")
        return key

    @signed_in
    async def get(self, key_id: str) -> None:
        self.render_page("api/confirm_invalidate.html", key=await self.key_of_user(key_id))

    @signed_in
    async def post(self, key_id: str) -> None:
        key = await self.key_of_user(key_id)
        if self.get_body_argument("confirm", "") != "yes":
            self.render_page("api/confirm_invalidate.html", key=key)
            return
        invalidated = await db.invalidate_api_key(self.db, key_id=key.key_id, user_id=key.user_id)
        assert invalidated is not None
        if self.is_htmx:
            self.set_header("Vary", "HX-Request")
            self.finish(self.render_string_page("api/_key_row.html", key=invalidated))
        else:
            self.redirect("/api", status=303)


class ShareXConfigHandler(BaseHandler):
    """GET /api/sharex.sxcu: a ShareX uploader for anonymous uploads. (The one with a key is
    offered once, as a data: link beside the new key, so the key is never stored.)"""

    def get(self) -> None:
        if not self.config.allow_anonymous:
            raise Refusal(
                404,
                "This server takes no anonymous uploads, so it has no anonymous ShareX"
                " uploader: generate an API key on the API page and download the uploader"
                " offered beside it.",
            )
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
        public_url = self.config.public_url
        self.finish(openapi.document_bytes(f"{public_url}/" if public_url else "/"))


routes = [
    (r"/api", ApiPageHandler),
    (r"/api/openapi\.json", OpenApiHandler),
    (r"/api/sharex\.sxcu", ShareXConfigHandler),
    (r"/api/keys", ApiKeyListHandler),
    (r"/api/keys/([0-9a-f]{16})/invalidate", ApiKeyInvalidateHandler),
]
