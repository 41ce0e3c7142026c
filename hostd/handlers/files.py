"""A signed-in user's files: the list, deleting, and image thumbnails."""

from __future__ import annotations

import math

from hostd import db, limits, uploads
from hostd.handlers.base import BaseHandler, Refusal, signed_in
from hostd.handlers.download import cache_control, not_served
from hostd.handlers.upload import file_urls
from hostd.hashes import PUBLIC_HASH_PATTERN
from hostd.parsing import parse_count
from hostd.storage import BlobMissing, StoreUnavailable
from hostd.thumbs import THUMBNAILABLE, ThumbnailsBusy

PAGE_SIZE = 20
MAX_PAGE = 1_000_000  # 20 million uploads; keeps OFFSET far inside SQLite's integers
MAX_ID = 2**63 - 1  # SQLite's largest integer: no row has an id past it
NO_SUCH_UPLOAD = "You have no upload with this id."
ALREADY_DELETED = "That file was already deleted (in another tab, or by its deletion link)."


class FilesPage(BaseHandler):
    """Renders a page of the signed-in user's files, newest first."""

    def page_number(self) -> int:
        page = parse_count(self.get_query_argument("page", "1"), at_most=MAX_PAGE)
        if not page or page > MAX_PAGE:
            raise Refusal(400, f"A page number is a whole number from 1 to {MAX_PAGE:,}.")
        return page

    async def show(self, page: int, *, at_most_last: bool = False, notice: str = "") -> None:
        """Page `page`; with `at_most_last`, the last page when `page` is past it (a delete
        that emptied the last page shows the one before, and the address bar says so)."""
        assert self.current_user is not None
        user = self.current_user
        files, total = await self.list_page(user.id, page)
        pages = max(1, math.ceil(total / PAGE_SIZE))
        if at_most_last and page > pages:
            page = pages
            files, total = await self.list_page(user.id, page)
            pages = max(1, math.ceil(total / PAGE_SIZE))
            self.set_header("HX-Replace-Url", "/files" if page == 1 else f"/files?page={page}")
        base = self.public_url()
        self.render_page(
            "files/list.html",
            fragment="file_list",
            files=[(f, file_urls(base, f.blob, f.upload.original_name)) for f in files],
            page=page,
            pages=pages,
            total=total,
            thumbnailable=THUMBNAILABLE,
            used_bytes=user.used_bytes,
            quota_bytes=limits.quota_of(user, self.config.quota_bytes),
            notice=notice,
        )

    async def list_page(self, user_id: int, page: int) -> tuple[list[db.UserFile], int]:
        return await db.list_user_files(
            self.db,
            user_id=user_id,
            limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE,
            now=self.now(),
        )


class FileListHandler(FilesPage):
    @signed_in
    async def get(self) -> None:
        await self.show(self.page_number())


class FileHandler(FilesPage):
    """DELETE (htmx) or POST .../delete (a plain form) removes one of the user's uploads."""

    @signed_in
    async def delete(self, upload_id: str) -> None:
        page = self.page_number() if self.is_htmx else None
        found = await self.remove(upload_id)
        if not found and page is None:
            raise Refusal(404, NO_SUCH_UPLOAD)
        # With htmx, the list again, from the database: its counts and quota meter follow,
        # and the page fills up with the next file. A row deleted meanwhile (in another tab,
        # by its deletion link) goes too, with a word why.
        if page is not None:
            self.current_user = await self.session_user()
        if page is None or self.current_user is None:  # (signed out meanwhile)
            self.finish("")
            return
        await self.show(page, at_most_last=True, notice="" if found else ALREADY_DELETED)

    @signed_in
    async def post(self, upload_id: str) -> None:
        if self.get_body_argument("confirm", "") != "yes":
            await self.ask(upload_id)
            return
        if not await self.remove(upload_id):
            raise Refusal(404, NO_SUCH_UPLOAD)
        self.redirect("/files", status=303)

    async def ask(self, upload_id: str) -> None:
        """The page without JavaScript that asks first, naming the file."""
        assert self.current_user is not None
        number = parse_count(upload_id, at_most=MAX_ID)
        found = None
        if number is not None and number <= MAX_ID:
            found = await db.get_upload_with_blob(self.db, upload_id=number)
        if found is None or found[1].user_id != self.current_user.id:
            raise Refusal(404, NO_SUCH_UPLOAD)
        blob, upload = found
        urls = file_urls(self.public_url(), blob, upload.original_name)
        self.render_page("files/confirm_delete.html", upload=upload, blob=blob, urls=urls)

    async def remove(self, upload_id: str) -> bool:
        """Deletes one of the user's uploads; False when they have no such upload."""
        assert self.current_user is not None
        number = parse_count(upload_id, at_most=MAX_ID)
        if number is None or number > MAX_ID:
            raise Refusal(404, NO_SUCH_UPLOAD)
        return await uploads.delete(
            self.db, self.store, self.thumbs, upload_id=number, user_id=self.current_user.id
        )


PLACEHOLDER = "thumb-unavailable.svg"
NO_THUMBNAIL = "There is no thumbnail for this hash."
BUSY_RETRY_SECONDS = 5


class ThumbnailHandler(BaseHandler):
    """A WebP of an image, 320x320 at most: no sign-in, made once, then served from disk."""

    async def get(self, hash: str) -> None:
        now = self.now()
        blob = await db.get_blob(self.db, hash, now=now)
        if blob is None:
            raise await not_served(self.db, hash, NO_THUMBNAIL)
        if blob.content_type not in THUMBNAILABLE:
            raise Refusal(404, NO_THUMBNAIL)
        if not blob.alive_at(now):
            raise Refusal(404, NO_THUMBNAIL)
        try:
            path = self.thumbs.made(blob.sha256)
            if path is None:
                async with self.store.local_copy(blob.sha256) as source:
                    path = await self.thumbs.get(blob.sha256, source)
        except BlobMissing:  # taken down by `hostd file rm`
            db.forget_blob(self.db, blob.hash)
            raise await not_served(self.db, hash, NO_THUMBNAIL) from None
        except (ThumbnailsBusy, StoreUnavailable):  # S3 down: "later" too
            self.answer_busy()
            return
        if path is None:
            # An image Pillow cannot read, or too big to decode, gets a neutral picture.
            self.redirect(self.static_url(PLACEHOLDER))
            return
        self.set_header("Content-Type", "image/webp")
        self.set_header("Cache-Control", cache_control(blob, self.now()))
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
    (rf"/thumbs/({PUBLIC_HASH_PATTERN})\.webp", ThumbnailHandler),
]
