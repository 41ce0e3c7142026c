"""Thumbnails of uploaded images: made lazily with Pillow, cached on disk, never upscaled.

Decoding is where a small upload can cost a lot: an 8000x8000 PNG of one colour is 260 KiB
on disk and 256 MB decoded. So, before any pixel is decoded, the memory the decode would hold
is estimated from the image's header, and an image over the budget gets no thumbnail; a
JPEG is decoded at 1/2, 1/4 or 1/8 scale (draft) when that still leaves twice the
thumbnail's size; and thumbnails are made one at a time on a thread of their own (never the
default pool, which upload writes use), behind a bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

from hostd import affinity

if TYPE_CHECKING:  # Pillow itself is imported by the first thumbnail, in its thread: a
    # server that makes none never holds its 3 MiB
    from PIL import Image, ImageFile, JpegImagePlugin

log = logging.getLogger("hostd")

MiB = 1024 * 1024
THUMB_SIZE = (320, 320)
# Decode (draft) or reduce to at least twice the thumbnail's size, then resample: as good
# as resampling from the full image, for a fraction of the work.
REDUCING_GAP = 2.0
THUMBNAILABLE = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/tiff"}
PILLOW_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
# One decode at a time, and this many thumbnails waiting or being made: more than a page of
# the file list (20) asks for at once.
MAX_JOBS = 32
# Text chunks a PNG may hold in memory once opened (Pillow's default is 64 MiB).
PNG_TEXT_BYTES = 4 * MiB
# What Pillow keeps for one pixel: 1 byte for "1", "L" and "P", 2 for 16-bit grey, else 4
# (RGB is stored as RGBX).
PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}

# made: the thumbnail is on disk. refused: this image will never have one (unreadable or
# over the budget). failed: not this time (writing it failed, e.g. a full disk).
Outcome = Literal["made", "refused", "failed"]


class ThumbnailsBusy(Exception):
    """MAX_JOBS thumbnails are already waiting; a new one would only wait longer."""


class Thumbnails:
    """WebP thumbnails under `root/ab/<sha256>.webp`, made one at a time."""

    def __init__(self, root: Path, *, max_decode_bytes: int, max_jobs: int = MAX_JOBS) -> None:
        self.root = root
        self.max_decode_bytes = max_decode_bytes
        self.max_jobs = max_jobs
        # Decoding and encoding images holds a CPU for long: any CPU will do.
        self._worker = ThreadPoolExecutor(1, "hostd-thumbs", initializer=affinity.roam)
        # Requests for the same image share its job: sha256 -> the job's outcome.
        self._jobs: dict[str, asyncio.Future[Outcome]] = {}
        self._refused: set[str] = set()  # asked again, these cost nothing

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.webp"

    def made(self, sha256: str) -> Path | None:
        """The thumbnail's path if it is made already (then no copy of the image is needed:
        with S3, that copy is a download)."""
        target = self.path(sha256)
        return target if target.exists() else None

    async def get(self, sha256: str, source: Path) -> Path | None:
        """The thumbnail's path, made on first request; None when the image gets none.

        Raises ThumbnailsBusy when MAX_JOBS other thumbnails are waiting."""
        target = self.path(sha256)
        if target.exists():
            return target
        if sha256 in self._refused:
            return None
        job = self._jobs.get(sha256)
        if job is None:
            if len(self._jobs) >= self.max_jobs:
                raise ThumbnailsBusy
            job = asyncio.get_running_loop().run_in_executor(
                self._worker, make_thumbnail, source, target, self.max_decode_bytes
            )
            self._jobs[sha256] = job
            job.add_done_callback(lambda done: self._finished(sha256, done))
        # shield: a waiter that goes away must not cancel the job the others wait for.
        outcome = await asyncio.shield(job)
        return target if outcome == "made" else None

    def _finished(self, sha256: str, job: asyncio.Future[Outcome]) -> None:
        del self._jobs[sha256]
        if not job.cancelled() and job.exception() is None and job.result() == "refused":
            if len(self._refused) >= 10_000:
                self._refused.clear()
            self._refused.add(sha256)

    def close(self) -> None:
        """Drop the thumbnails still waiting; the one being made is finished."""
        self._worker.shutdown(wait=False, cancel_futures=True)

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(sha256).unlink()


def make_thumbnail(source: Path, target: Path, max_decode_bytes: int) -> Outcome:
    """Write the thumbnail of the image at `source` to `target`."""
    try:
        if source.stat().st_size > max_decode_bytes:
            return "refused"  # Pillow reads some files (WebP) whole before any check
        with source.open("rb") as fp:
            thumb = thumbnail_of(fp, max_decode_bytes)
    except Exception:  # decoding untrusted images can fail in any way; no thumbnail then
        return "refused"
    if thumb is None:
        return "refused"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                thumb.save(out, "WEBP", quality=80)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
    except Exception as exc:  # a full disk, say: no thumbnail this time
        log.warning("could not write the thumbnail %s: %s", target.name, exc)
        return "failed"
    return "made"


def thumbnail_of(source: IO[bytes], max_decode_bytes: int) -> Image.Image | None:
    """The image's thumbnail (EXIF orientation applied, never enlarged), or None when
    decoding it would hold more than `max_decode_bytes`."""
    # Pillow's own bomb check counts pixels before draft(); ours (decode_bytes) counts bytes
    # after it, so that a huge JPEG still gets its thumbnail at 1/8 scale.
    from PIL import Image, ImageOps, PngImagePlugin

    Image.MAX_IMAGE_PIXELS = None
    PngImagePlugin.MAX_TEXT_MEMORY = PNG_TEXT_BYTES
    with Image.open(source, formats=PILLOW_FORMATS) as image:
        original_size = image.size
        scale = min(THUMB_SIZE[0] / image.width, THUMB_SIZE[1] / image.height)
        if scale < 1:  # JPEG: decode at the smallest scale that keeps REDUCING_GAP
            wanted = (image.width * scale * REDUCING_GAP, image.height * scale * REDUCING_GAP)
            image.draft(None, (max(1, int(wanted[0])), max(1, int(wanted[1]))))
        if decode_bytes(image, original_size) > max_decode_bytes:
            return None
        # Pillow's reduce() takes no 16-bit grey (a scan, a microscope's or a telescope's
        # picture): those are resampled from the full image.
        sixteen_bits = image.mode.startswith("I;16") or image.mode == "I"
        gap = None if sixteen_bits else REDUCING_GAP
        image.thumbnail(THUMB_SIZE, reducing_gap=gap)  # shrinks only
        thumb = ImageOps.exif_transpose(image)  # on the thumbnail: a copy costs little
        if sixteen_bits:  # their high byte as 8-bit grey (converted as is, all would be white)
            thumb = thumb.convert("I").point(lambda value: value * (1 / 256)).convert("L")
        return thumb if thumb.mode in ("RGB", "RGBA") else thumb.convert("RGBA")


def decode_bytes(image: ImageFile.ImageFile, original_size: tuple[int, int]) -> int:
    """The memory making the thumbnail of an opened (and drafted) image holds at its peak,
    from its header alone. Only the first frame is decoded, so other frames cost nothing."""
    from PIL import JpegImagePlugin

    assert image.fp is not None
    pixels = image.width * image.height
    cost = pixels * PIXEL_BYTES.get(image.mode, 4)
    if image.mode in ("LA", "RGBA"):
        cost *= 2  # resize() and reduce() work on a premultiplied copy (La, RGBa)
    if image.format in ("TIFF", "BMP"):
        cost += pixels * 4  # libtiff's strip buffer, or the RLE decoder's bytearray
    if image.format == "WEBP":
        # libwebp's canvas, the copy of it handed over as bytes, Pillow's image and the
        # resize copy: 4 bytes a pixel each, whatever the mode (measured).
        cost = pixels * 16
    if isinstance(image, JpegImagePlugin.JpegImageFile) and _jpeg_buffers_coefficients(image):
        # A progressive (or multi-scan) JPEG is decoded from DCT coefficients kept for the
        # whole image at full size, 2 bytes each, whatever the draft() scale.
        width, height = original_size
        h_max = max(h for _, h, _, _ in image.layer)
        v_max = max(v for _, _, v, _ in image.layer)
        cost += sum(width * height * 2 * h * v // (h_max * v_max) for _, h, v, _ in image.layer)
    # Whatever Pillow read to open it (text, EXIF, ICC profile; a WebP whole), it may keep.
    return cost + image.fp.tell()


def _jpeg_buffers_coefficients(image: JpegImagePlugin.JpegImageFile) -> bool:
    """libjpeg keeps the whole image's coefficients when the file has more than one scan:
    it is progressive, or its first scan does not hold every component."""
    if image.info.get("progressive"):
        return True
    assert image.fp is not None
    at = image.fp.tell()
    try:
        image.fp.seek(0)
        return _first_scan_components(image.fp) < image.layers
    finally:
        image.fp.seek(at)


def _first_scan_components(fp: IO[bytes]) -> int:
    """The number of components in a JPEG's first scan (its SOS header); 0 if none is found."""
    if fp.read(2) != b"\xff\xd8":
        return 0
    while fp.read(1) == b"\xff":
        kind = fp.read(1)
        while kind == b"\xff":  # fill bytes before a marker
            kind = fp.read(1)
        head = fp.read(3)  # the segment's length (2 bytes, itself included), its first byte
        if not kind or len(head) < 3:
            return 0
        if kind == b"\xda":
            return head[2]
        fp.seek(int.from_bytes(head[:2], "big") - 3, os.SEEK_CUR)
    return 0
