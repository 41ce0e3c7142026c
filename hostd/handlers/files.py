"""A signed-in user's files: the list, deleting, and image thumbnails."""

from __future__ import annotations

import math

import tornado.web

from hostd import db
from hostd.handlers.base import BaseHandler, Refusal
from hostd.handlers.download import CACHE_FOREVER, HASH_PATTERN
from hostd.handlers.upload import file_urls
from hostd.thumbs import THUMBNAILABLE, ThumbnailsBusy

PAGE_SIZE = 20


class FileListHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        assert self.current_user is not None
        requested = self.get_query_argument("page", "1")
        page = int(requested) if requested.isdigit() and int(requested) > 0 else 1
        files, total = await db.list_user_files(
            self.db, user_id=self.current_user.id, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
        )
        pages = max(1, math.ceil(total / PAGE_SIZE))
        base = self.public_url()
        self.render_page(
            "files/list.html",
            fragment="file_list",
            files=[(f, file_urls(base, f.blob, f.upload.original_name)) for f in files],
            page=page,
            pages=pages,
            total=total,
            thumbnailable=THUMBNAILABLE,
        )


class FileHandler(BaseHandler):
    """DELETE (htmx) or POST .../delete (a plain form) removes one of the user's uploads."""

    @tornado.web.authenticated
    async def delete(self, upload_id: str) -> None:
        await self.remove(int(upload_id))
        self.finish("")  # htmx swaps the row out (hx-target="closest tr", hx-swap="outerHTML")

    @tornado.web.authenticated
    async def post(self, upload_id: str) -> None:
        if self.get_body_argument("confirm", "") != "yes":
            self.render_page("files/confirm_delete.html", upload_id=upload_id)
            return
        await self.remove(int(upload_id))
        self.redirect("/files", status=303)

    async def remove(self, upload_id: int) -> None:
        assert self.current_user is not None

        async def remove_blob(sha256: str) -> None:
            self.store.delete(sha256)
            self.thumbs.delete(sha256)

        found = await db.delete_upload(
            self.db, upload_id=upload_id, user_id=self.current_user.id, remove_blob=remove_blob
        )
        if not found:
            raise Refusal(404, "You have no upload with this id.")


PLACEHOLDER = "thumb-unavailable.svg"
BUSY_RETRY_SECONDS = 5


class ThumbnailHandler(BaseHandler):
    """A WebP of an image, 320x320 at most: no sign-in, made once, then served from disk."""

    async def get(self, hash: str) -> None:
        blob = await db.get_blob(self.db, hash)
        if (
            blob is None
            or blob.content_type not in THUMBNAILABLE
            or not self.store.exists(blob.sha256)  # taken down by `hostd file rm`
        ):
            raise Refusal(404, "There is no thumbnail for this hash.")
        try:
            path = await self.thumbs.get(blob.sha256, self.store.path(blob.sha256))
        except ThumbnailsBusy:
            self.answer_busy()
            return
        if path is None:
            # An image Pillow cannot read, or too big to decode, gets a neutral picture.
            self.redirect(self.static_url(PLACEHOLDER))
            return
        self.set_header("Content-Type", "image/webp")
        self.set_header("Cache-Control", CACHE_FOREVER)
        self.finish(path.read_bytes())

    def answer_busy(self) -> None:
        """Not the placeholder's redirect, which means "never": a 503 means "later", to a
        script by its status and Retry-After, and to an <img> by its body, the placeholder
        (browsers show an image answered with an error status)."""
        self.set_status(503)
        self.set_header("Retry-After", str(BUSY_RETRY_SECONDS))
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Type", "image/svg+xml")
        self.finish((self.config.static_dir / PLACEHOLDER).read_bytes())


routes = [
    (r"/files", FileListHandler),
    (r"/files/([0-9]+)", FileHandler),
    (r"/files/([0-9]+)/delete", FileHandler),
    (rf"/thumbs/({HASH_PATTERN})\.webp", ThumbnailHandler),
]
