"""Thumbnails of uploaded images: made lazily with Pillow, cached on disk, never upscaled."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

THUMB_SIZE = (320, 320)
THUMBNAILABLE = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/tiff"}
# Refuse decompression bombs: a small file that claims a huge canvas.
MAX_PIXELS = 64_000_000


class Thumbnails:
    """WebP thumbnails under `root/ab/<sha256>.webp`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, asyncio.Lock] = {}

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.webp"

    async def get(self, sha256: str, source: Path) -> Path | None:
        """The thumbnail's path, made on first request; None when the image cannot be read."""
        target = self.path(sha256)
        if target.exists():
            return target
        lock = self._locks.setdefault(sha256, asyncio.Lock())
        try:
            async with lock:
                if not target.exists():
                    made = await asyncio.to_thread(_make, source, target)
                    if not made:
                        return None
        finally:
            if not lock.locked():
                self._locks.pop(sha256, None)
        return target

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(sha256).unlink()


def _make(source: Path, target: Path) -> bool:
    try:
        with Image.open(source) as image:
            if image.width * image.height > MAX_PIXELS:
                return False
            image.seek(0)
            thumb = ImageOps.exif_transpose(image)
            thumb.thumbnail(THUMB_SIZE)  # shrinks only: thumbnail() never enlarges
            if thumb.mode not in ("RGB", "RGBA"):
                thumb = thumb.convert("RGBA")
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as out:
                thumb.save(out, "WEBP", quality=80)
            os.replace(temp, target)
    except Exception:  # decoding untrusted images can fail in any way; no thumbnail then
        return False
    return True
