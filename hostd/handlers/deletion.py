"""Deleting uploads: by an upload's deletion link (/delete/<token>), and through the API
(DELETE /api/files/<hash> with a Bearer key)."""

from __future__ import annotations

import re
from typing import Any

from hostd import db, uploads
from hostd.auth import DELETE_TOKEN_PATTERN, delete_token_hash
from hostd.db import ApiKey, Removal
from hostd.handlers.base import ApiHandler, BaseHandler, Refusal, error_message
from hostd.handlers.upload import file_urls, touch_key
from hostd.hashes import PUBLIC_HASH_MAX, PUBLIC_HASH_MIN, PUBLIC_HASH_PATTERN

NO_SUCH_LINK = (
    "This deletion link is not valid: nothing can be deleted with it. If it was copied from "
    "an upload's answer, check that it was copied whole."
)
MALFORMED_LINK = (
    "This is not a deletion link: its last part should be 43 letters, digits, '-' and '_'. "
    "Check that it was copied whole."
)
GONE = "This upload has been deleted already; there is nothing left for this link to delete."
EXPIRED = "This upload has expired: its file is no longer served, and goes with the next prune."


class DeleteLinkHandler(BaseHandler):
    """GET /delete/<token> shows what the link deletes and a Delete button; only a POST
    (the button, or `curl -X POST <url>`) deletes, so a link opened by a chat preview, a
    crawler or the browser's history deletes nothing. 404 for a token no upload ever had
    (the same whether or not the file exists), 410 once its upload is gone.

    The token is the authority, not a session: whoever holds the link may delete that one
    upload, signed in or not. So the token replaces Tornado's xsrf check here. The xsrf
    check stops another site from making a visitor's browser post with the visitor's
    cookies; this POST uses no cookie, and a site that knows the token needs no browser to
    use it, so an xsrf token would add nothing, and would break `curl -X POST`.
    """

    def check_xsrf_cookie(self) -> None:
        pass  # see the class docstring: the token in the URL is the secret

    def _request_summary(self) -> str:
        # The access log's line (Tornado's log_request) without the secret in the URL.
        return f"{self.request.method} /delete/<token> ({self.request.remote_ip})"

    def set_default_headers(self) -> None:
        # Also runs for error pages. The URL is a secret: never cached, never sent on as a
        # Referer, never indexed.
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Robots-Tag", "noindex")

    async def get(self, token: str) -> None:
        link = await db.get_delete_link(self.db, token_hash=self.token_hash(token))
        if link is None:
            raise Refusal(404, NO_SUCH_LINK)
        if link.file is None:
            raise Refusal(410, GONE)
        upload, blob = link.file.upload, link.file.blob
        if upload.expires_at is not None and upload.expires_at <= self.now():
            raise Refusal(410, EXPIRED)
        self.render_page(
            "deletion/confirm.html",
            upload=upload,
            blob=blob,
            urls=file_urls(self.public_url(), blob, upload.original_name),
            action=f"/delete/{token}",
        )

    async def post(self, token: str) -> None:
        token_hash = self.token_hash(token)
        link = await db.get_delete_link(self.db, token_hash=token_hash)  # for the page
        removal = await self.use(token_hash)
        if self.answers_json:
            self.write_json({"status": True, "deleted": removal.uploads})
            return
        # A link's upload only ever goes, so what it deleted was there when it was read.
        assert link is not None and link.file is not None
        self.render_page(
            "deletion/deleted.html",
            upload=link.file.upload,
            blob=link.file.blob,
            bytes_gone=removal.blob_gone,
        )

    async def delete(self, token: str) -> None:
        """`curl -X DELETE <delete_url>`, as linx and Zipline users do: the POST's deletion,
        answered in the API's JSON, {"status": true, "deleted": 1}. Safe for the same reason
        as the POST: no preview or crawler sends a DELETE."""
        removal = await self.use(self.token_hash(token))
        self.write_json({"status": True, "deleted": removal.uploads})

    async def use(self, token_hash: str) -> Removal:
        """Delete the link's upload; 404 for a link never issued, 410 when it is gone."""
        removal = await uploads.delete_by_link(
            self.db, self.store, self.thumbs, token_hash=token_hash
        )
        if removal is None:
            raise Refusal(404, NO_SUCH_LINK)
        if removal.uploads == 0:
            raise Refusal(410, GONE)
        return removal

    @property
    def answers_json(self) -> bool:
        """A DELETE, or a script asking for JSON rather than a page (`Accept:
        application/json`), gets the API's JSON, errors included."""
        if self.request.method == "DELETE":
            return True
        accept = self.request.headers.get("Accept", "")
        return "application/json" in accept and "text/html" not in accept

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if not self.answers_json:
            super().write_error(status_code, **kwargs)
            return
        self.set_error_headers(status_code, kwargs)
        message = error_message(status_code, self._reason, kwargs)
        self.write_json({"status": False, "error": message})

    def token_hash(self, token: str) -> str:
        """The token's hash, or 400 for what cannot be a token (nothing to look up)."""
        if DELETE_TOKEN_PATTERN.fullmatch(token) is None:
            raise Refusal(400, MALFORMED_LINK)
        return delete_token_hash(token)


HASH = re.compile(PUBLIC_HASH_PATTERN)
NOT_A_HASH = (
    f"a hash is {PUBLIC_HASH_MIN} to {PUBLIC_HASH_MAX} characters of A-Z, a-z, 0-9, '-' and '_'"
)
NONE_OF_YOURS = "you have no upload with this hash"


class ApiFileHandler(ApiHandler):
    """DELETE /api/files/<hash> with `Authorization: Bearer <key>`: removes the key's
    account's uploads of that file; JSON {"status": true, "deleted": <how many>}.

    404 when the account has none, whether the file is someone else's, anonymous or
    unknown, so that hashes cannot be probed; 401 without a usable key. The bytes stay
    while another upload, anyone's, still points at them.

    No xsrf check: the Bearer key is the only authority (ApiHandler ignores cookies), and
    another site cannot make a browser send an Authorization header.
    """

    def check_xsrf_cookie(self) -> None:
        pass  # see the class docstring

    async def delete(self, hash: str) -> None:
        key = await self.required_key()
        if HASH.fullmatch(hash) is None:
            raise Refusal(400, NOT_A_HASH)
        deleted = await uploads.delete_uploads_of_blob(
            self.db, self.store, self.thumbs, user_id=key.user_id, hash=hash
        )
        await touch_key(self, key)
        if not deleted:
            raise Refusal(404, NONE_OF_YOURS)
        self.write_json({"status": True, "deleted": deleted})

    async def required_key(self) -> ApiKey:
        """The usable key in `Authorization: Bearer`; 401 without one, 503 when busy."""
        header = self.authorization()
        if header is None:
            raise Refusal(401, "this needs an API key: send 'Authorization: Bearer <API key>'")
        return await super().bearer_key(header)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="hostd"')
        super().write_error(status_code, **kwargs)


routes = [
    (r"/delete/([^/]*)", DeleteLinkHandler),
    (r"/api/files/([^/]*)", ApiFileHandler),
]
