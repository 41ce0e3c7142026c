"""A signed-in user's files: the list, deleting, and image thumbnails."""

from __future__ import annotations

import math

import tornado.web

from hostd import db, uploads
from hostd.handlers.base import BaseHandler, Refusal
from hostd.handlers.download import CACHE_FOREVER
from hostd.handlers.upload import file_urls
from hostd.hashes import PUBLIC_HASH_PATTERN
from hostd.storage import BlobMissing
from hostd.thumbs import THUMBNAILABLE

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
        found = await uploads.delete(
            self.db, self.store, self.thumbs, upload_id=upload_id, user_id=self.current_user.id
        )
        if not found:
            raise Refusal(404, "You have no upload with this id.")


class ThumbnailHandler(BaseHandler):
    async def get(self, hash: str) -> None:
        blob = await db.get_blob(self.db, hash)
        if blob is None or blob.content_type not in THUMBNAILABLE:
            raise Refusal(404, "There is no thumbnail for this hash.")
        try:
            async with self.store.local_copy(blob.sha256) as source:
                path = await self.thumbs.get(blob.sha256, source)
        except BlobMissing:  # taken down by `hostd file rm`
            db.forget_blob(self.db, blob.hash)
            raise Refusal(404, "There is no thumbnail for this hash.") from None
        if path is None:
            # An image Pillow cannot read gets a neutral picture, not a broken one.
            self.redirect(self.static_url("thumb-unavailable.svg"))
            return
        self.set_header("Content-Type", "image/webp")
        self.set_header("Cache-Control", CACHE_FOREVER)
        self.finish(path.read_bytes())


routes = [
    (r"/files", FileListHandler),
    (r"/files/([0-9]+)", FileHandler),
    (r"/files/([0-9]+)/delete", FileHandler),
    (rf"/thumbs/({PUBLIC_HASH_PATTERN})\.webp", ThumbnailHandler),
]
