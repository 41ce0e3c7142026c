"""The limits that protect the box: what one upload may take of the disk, of its account's
quota and of its sender's rate budgets; checked before the body is read and as it streams.

Each refusal is an UploadError with the status the README gives for it: 413 for a file that
is too big (anonymous limit, quota, an hour's byte budget), 429 with Retry-After for a rate
budget spent, 507 when the disk would go below storage.min_free_bytes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

from hostd import db
from hostd.config import Config
from hostd.db import Database, OverQuota, User
from hostd.formdata import FORM_OVERHEAD_BYTES, UploadError
from hostd.throttle import UploadLimiter, address_key

log = logging.getLogger("hostd")

GiB = 1024 * 1024 * 1024
# storage.min_free_bytes when unset: 1 GiB, or this share of the filesystem if smaller.
DEFAULT_MIN_FREE_BYTES = GiB
DEFAULT_MIN_FREE_SHARE = 0.05
# While uploads stream, free space is measured again each time this many bytes have
# arrived (over all uploads); in between, it is the last measure less what arrived since.
MEASURE_EVERY_BYTES = 4 * 1024 * 1024
# An account's upload is checked against its quota before the body is read, unless the
# body is at most this long and already on its way (no Expect: 100-continue): reading it
# then costs less than the database read that would refuse it first, and recording the
# upload checks the quota anyway (db.OverQuota), removing the bytes it refuses.
QUOTA_AFTER_BODY_BYTES = 1024 * 1024
# The largest Content-Length read as a number; a longer one is "more than" this.
MAX_LENGTH = 2**62

LOW_ON_SPACE = (
    "the server is too low on storage space to take this file; it was not stored. Try again later."
)


class DiskGuard:
    """Keeps `min_free_bytes` free on the filesystem that holds `path` (the data dir).

    An upload is admitted when its Content-Length fits above the line, counting what the
    uploads in flight have declared and not yet sent; as its body arrives it is stopped
    when the estimate of free space, less those promises, crosses the line. A statvfs is
    made for each upload admitted and every MEASURE_EVERY_BYTES of body, never per chunk.
    `min_free_bytes` None: DEFAULT_MIN_FREE_BYTES or DEFAULT_MIN_FREE_SHARE of the
    filesystem, whichever is smaller; 0 turns the guard off.
    """

    def __init__(
        self,
        path: Path,
        min_free_bytes: int | None,
        *,
        statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
    ) -> None:
        self.path = path
        self.enabled = min_free_bytes != 0
        self._min_free = min_free_bytes
        self._statvfs = statvfs
        self._free: int | None = None  # at the last measure; None: could not measure
        self._since = 0  # body bytes received since then
        self.promised = 0  # bytes admitted uploads have declared and not yet sent

    @property
    def min_free_bytes(self) -> int:
        if self._min_free is None:
            self.measure()
        return self._min_free or 0

    def measure(self) -> None:
        try:
            stat = self._statvfs(self.path)
        except OSError as exc:
            log.warning("cannot measure the free space of %s: %s", self.path, exc)
            self._free = None
            return
        self._free, self._since = stat.f_bavail * stat.f_frsize, 0
        if self._min_free is None:
            share = int(stat.f_blocks * stat.f_frsize * DEFAULT_MIN_FREE_SHARE)
            self._min_free = min(DEFAULT_MIN_FREE_BYTES, share)

    def room(self) -> int:
        """Bytes that may still arrive before the line is crossed (negative: crossed)."""
        if not self.enabled or self._free is None:
            return GiB * GiB
        return self._free - self._since - self.promised - self.min_free_bytes

    def admit(self, length: int | None) -> Reservation | None:
        """A reservation of `length` bytes (None: a chunked body, reserved as it comes),
        or None when it does not fit."""
        if not self.enabled:
            return Reservation(self, 0)
        self.measure()
        if self.room() - (length or 0) < 0:
            return None
        return Reservation(self, length or 0)

    def received(self, size: int) -> None:
        self._since += size
        if self.enabled and self._since >= MEASURE_EVERY_BYTES:
            self.measure()


class Reservation:
    """The bytes one upload declared and has not yet sent, held until release()."""

    def __init__(self, guard: DiskGuard, declared: int) -> None:
        self._guard = guard
        self._left = declared
        guard.promised += declared

    def received(self, size: int) -> bool:
        """Count body bytes as they arrive; False when they cross the line."""
        taken = min(size, self._left)
        self._left -= taken
        self._guard.promised -= taken
        self._guard.received(size)
        return self._guard.room() >= 0

    def release(self) -> None:
        """Give back what was declared and not sent; safe to call more than once."""
        self._guard.promised -= self._left
        self._left = 0


def quota_of(user: User, default_quota_bytes: int | None) -> int | None:
    """The quota that applies to the account: its own, else accounts.quota_bytes."""
    return user.quota_bytes if user.has_own_quota else default_quota_bytes


def quota_message(*, used: int, quota: int, size: int, what: str = "file") -> str:
    left = max(0, quota - used)
    return (
        f"this {what} ({size} bytes) does not fit in your account's quota: {used} of"
        f" {quota} bytes used, {left} left; delete files on /files to make room"
    )


def over_quota_message(exc: OverQuota) -> str:
    return quota_message(used=exc.used_bytes, quota=exc.quota_bytes, size=exc.size_bytes)


def too_many(retry_after: float, message: str) -> UploadError:
    seconds = max(1, math.ceil(round(retry_after, 6)))  # 1.0000000000000009 s is 1 s
    return UploadError(
        429, f"{message}; try again in {seconds} s", headers={"Retry-After": str(seconds)}
    )


class Admission:
    """One upload within the limits, from prepare() to its end. `max_file_bytes` and
    `too_large` are the file's own limit and the message past it (for the form)."""

    def __init__(
        self,
        limits: Limits,
        reservation: Reservation,
        subjects: list[str],
        max_file_bytes: int,
        too_large: str | None,
    ) -> None:
        self._limits = limits
        self._reservation = reservation
        self._subjects = subjects
        self.max_file_bytes = max_file_bytes
        self.too_large = too_large

    def received(self, size: int) -> None:
        """Count body bytes as they arrive; UploadError (429, 507) when the upload must stop.
        A piece refused for the byte budget is not counted against it."""
        wait = self._limits.budgets.received(self._subjects, size)
        if wait > 0:
            self._limits.refused["upload_bytes_per_hour"] += 1
            raise too_many(wait, self._limits.bytes_message())
        if not self._reservation.received(size):
            raise UploadError(507, LOW_ON_SPACE)

    def release(self) -> None:
        self._reservation.release()


class Limits:
    """The limits of one server: the config's numbers, the disk guard and the budgets."""

    def __init__(
        self, config: Config, *, clock: Callable[[], float], guard: DiskGuard | None = None
    ) -> None:
        self.config = config
        self.guard = guard or DiskGuard(config.data_dir, config.min_free_bytes)
        self.budgets = UploadLimiter(
            per_minute=config.uploads_per_minute,
            bytes_per_hour=config.upload_bytes_per_hour,
            clock=clock,
        )
        # Uploads refused with a 429, by the setting that refused them, for /metrics.
        self.refused = {"uploads_per_minute": 0, "upload_bytes_per_hour": 0}

    def bytes_message(self) -> str:
        return (
            f"too much uploaded: at most {self.config.upload_bytes_per_hour} bytes an hour"
            " from one address or API key"
        )

    async def admit(
        self,
        database: Database,
        *,
        length: int | None,
        user_id: int | None,
        key_id: str | None,
        address: str,
        framing_bytes: int = FORM_OVERHEAD_BYTES,
        held_back: bool = True,
    ) -> Admission:
        """Check an upload before its body is read: raise UploadError (413, 429, 507) when
        the limits refuse it. `length` is the body's Content-Length, None when chunked;
        `framing_bytes`, how much of it at most is not the file (0: a raw body); `held_back`,
        False when the body is on its way without waiting for an answer (no Expect:
        100-continue), which lets a short one skip the early quota check (see
        QUOTA_AFTER_BODY_BYTES)."""
        config = self.config
        max_file, too_large = config.max_upload_bytes, None
        # The form's framing is at most `framing_bytes`: a body longer than a limit by
        # more than that holds a file over it.
        smallest = max(1, length - framing_bytes) if length is not None else 1
        if user_id is None and config.anonymous_max_upload_bytes is not None:
            max_file = config.anonymous_max_upload_bytes
            if smallest > max_file:
                assert length is not None
                raise UploadError(413, self.too_large_message(length, None, framing_bytes))
            too_large = self.anonymous_message("this file is larger")
        if user_id is not None and (held_back or length is None or length > QUOTA_AFTER_BODY_BYTES):
            await self.check_quota(database, user_id, smallest, length)
        per_hour = config.upload_bytes_per_hour
        if per_hour is not None and length is not None and length > per_hour:
            raise UploadError(
                413,
                f"this upload ({length} bytes) is larger than the {per_hour} bytes an hour"
                " that one address or API key may upload",
            )
        reservation = self.guard.admit(length)
        if reservation is None:
            raise UploadError(507, LOW_ON_SPACE)
        subjects = [f"addr:{address_key(address)}"]
        if key_id is not None:
            subjects.append(f"key:{key_id}")
        count_wait, bytes_wait = self.budgets.start(subjects, length)
        if count_wait > 0 or bytes_wait > 0:
            reservation.release()
            if count_wait >= bytes_wait:
                self.refused["uploads_per_minute"] += 1
                raise too_many(count_wait, self.count_message())
            self.refused["upload_bytes_per_hour"] += 1
            raise too_many(bytes_wait, self.bytes_message())
        return Admission(self, reservation, subjects, max_file, too_large)

    def resume(
        self,
        *,
        length: int | None,
        upload_length: int,
        user_id: int | None,
        key_id: str | None,
        address: str,
    ) -> Admission:
        """A later part of a resumable upload of `upload_length` bytes in all: it was
        counted, and checked against the quota, when it began; the file limits of its owner
        (`user_id`; None: anonymous) hold again (they may have changed since), and its bytes
        meet the disk guard and the byte budgets. UploadError 413 for a file over its
        limit, 429 when the byte budget has no room for `length` more (None, chunked: for
        a byte), 507 when the disk has none."""
        self.hold_resumable(upload_length, user_id)
        subjects = [f"addr:{address_key(address)}"]
        if key_id is not None:
            subjects.append(f"key:{key_id}")
        # As for a new upload: a part the byte budget has no room for is refused before its
        # body is read, and costs nothing.
        wait = self.budgets.bytes_wait(subjects, length)
        if wait > 0:
            self.refused["upload_bytes_per_hour"] += 1
            raise too_many(wait, self.bytes_message())
        reservation = self.guard.admit(length)
        if reservation is None:
            raise UploadError(507, LOW_ON_SPACE)
        return Admission(self, reservation, subjects, self.config.max_upload_bytes, None)

    def hold_resumable(self, length: int, user_id: int | None) -> None:
        """Raise UploadError 413 when a resumable upload of `length` bytes is over the file
        limit of its owner (`user_id`; None: anonymous, held to anonymous_max_upload_bytes).
        Checked when it begins, at each part, and before it is stored."""
        most = self.config.max_upload_bytes
        if user_id is None and self.config.anonymous_max_upload_bytes is not None:
            most = self.config.anonymous_max_upload_bytes
        if length > most:
            raise UploadError(413, self.too_large_message(length, user_id, 0))

    def count_message(self) -> str:
        return (
            f"too many uploads: at most {self.config.uploads_per_minute} a minute from one"
            " address or API key"
        )

    def too_large_message(self, length: int, user_id: int | None, framing_bytes: int) -> str:
        """Why a body of `length` bytes (its Content-Length) is refused as too large, in the
        words of the limit that applies to its sender: the anonymous one for an anonymous
        upload, when there is one, else max_upload_bytes."""
        if user_id is None and self.config.anonymous_max_upload_bytes is not None:
            # The file's own size is not known yet: a form's body holds more than it.
            this = "this file is" if framing_bytes == 0 else "this upload's body is"
            size = f"more than {MAX_LENGTH}" if length > MAX_LENGTH else str(length)
            return self.anonymous_message(f"{this} {size} bytes")
        return f"the file is larger than the limit of {self.config.max_upload_bytes} bytes"

    def anonymous_message(self, this: str) -> str:
        return (
            f"anonymous uploads may be at most {self.config.anonymous_max_upload_bytes}"
            f" bytes, and {this}; sign in or use an API key to upload up to"
            f" {self.config.max_upload_bytes} bytes"
        )

    async def check_quota(
        self, database: Database, user_id: int, smallest: int, length: int | None
    ) -> None:
        user = await db.get_user(database, id=user_id)
        quota = quota_of(user, self.config.quota_bytes) if user else None
        if user is None or quota is None or user.used_bytes + smallest <= quota:
            return
        size, what = (length, "upload") if length is not None else (smallest, "file")
        message = quota_message(used=user.used_bytes, quota=quota, size=size, what=what)
        if length is None:
            message = (
                f"your account's quota is used up: {user.used_bytes} of {quota} bytes used;"
                " delete files on /files to make room"
            )
        raise UploadError(413, message)
