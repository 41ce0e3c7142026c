"""The two names of a file's content, said once.

`sha256` is the SHA-256 of the bytes in lowercase hex: what the store files them under,
and each file's ETag. `hash` is the *public hash*: the URL-safe base64 of that digest, cut
to 12 characters (72 bits); only when another blob already holds that prefix does the
next blob take 13 characters, and so on up to 16. The database's unique index on
blobs.hash decides which candidate a new blob gets; a hash once given never changes.
"""

from __future__ import annotations

import base64
import re
import urllib.parse

PUBLIC_HASH_MIN = 12
PUBLIC_HASH_MAX = 16
# A public hash in a URL (routes are built from this).
PUBLIC_HASH_PATTERN = rf"[A-Za-z0-9_-]{{{PUBLIC_HASH_MIN},{PUBLIC_HASH_MAX}}}"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def public_hash_candidates(sha256: str) -> list[str]:
    """The public hashes a blob may take, shortest first."""
    encoded = base64.urlsafe_b64encode(bytes.fromhex(sha256)).decode("ascii")
    return [encoded[:n] for n in range(PUBLIC_HASH_MIN, PUBLIC_HASH_MAX + 1)]


# The 256 groups of SHA-256s by their first two hex digits (a blob's ab/ folder): `hostd gc`,
# backups and `hostd storage migrate` walk a store one group at a time, holding 1/256 of its
# listing at once.
SHA256_GROUPS = tuple(f"{number:02x}" for number in range(256))


def is_sha256(text: str) -> bool:
    return SHA256_HEX.fullmatch(text) is not None


def hash_in(text: str) -> str:
    """The public hash in a hash or in any of a file's URLs (/<hash>, /<hash>.png, /<hash>/a)."""
    path = urllib.parse.urlsplit(text).path if "://" in text else text
    return path.lstrip("/").split("/")[0].split(".")[0]


def names_a_file(text: str) -> bool:
    """Whether `text` is a public hash, one of a file's URLs, or a SHA-256 (as gc says it)."""
    return is_sha256(text.strip().lower()) or (
        re.fullmatch(PUBLIC_HASH_PATTERN, hash_in(text)) is not None
    )
