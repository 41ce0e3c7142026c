"""Passwords and API keys: Argon2 off the IOLoop, in bounded lanes; sessions' and deletion
links' token hashes."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from hostd import affinity, db
from hostd.db import ApiKey, Cache, Database, User

KEY_PREFIX = "hk_"
KEY_ID_BYTES = 8  # shown as 16 hex characters: the lookup part of a key
KEY_SECRET_BYTES = 32
# Passwords are low-entropy: argon2-cffi's default RFC 9106 "low memory" profile
# (Argon2id, t=3, m=64 MiB, p=4), above OWASP's minimum (t=2, m=19 MiB, p=1).
PASSWORD_PROFILE = argon2.profiles.RFC_9106_LOW_MEMORY
# Key secrets are 256 random bits, so a slow hash adds little; OWASP's minimum keeps each
# verification to ~30 ms and 19 MiB, and verified keys are cached (see KeyVerifier).
KEY_PROFILE = argon2.Parameters(
    type=argon2.Type.ID,
    version=19,
    salt_len=16,
    hash_len=32,
    time_cost=2,
    memory_cost=19 * 1024,
    parallelism=1,
)
R = TypeVar("R")


@dataclass(frozen=True)
class MintedKey:
    """A new key: `token` is shown to the user once; only `secret_hash` is stored."""

    token: str
    key_id: str
    secret_hash: str


def parse_key(token: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed `hk_<16 hex>_<secret>` token, else None."""
    if not token.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = token[len(KEY_PREFIX) :].partition("_")
    if not sep or len(key_id) != KEY_ID_BYTES * 2 or not secret or len(secret) > 100:
        return None
    if any(c not in "0123456789abcdef" for c in key_id):
        return None
    return key_id, secret


def session_token_hash(token: str) -> str:
    """Sessions are stored by the SHA-256 of their token, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


DELETE_TOKEN_BYTES = 32
# secrets.token_urlsafe(32): 43 characters of URL-safe base64, 256 bits.
DELETE_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")


def new_delete_token() -> str:
    """The secret part of an upload's deletion link."""
    return secrets.token_urlsafe(DELETE_TOKEN_BYTES)


def delete_token_hash(token: str) -> str:
    """Deletion links are stored by the SHA-256 of their token. A fast hash is enough: the
    token is 256 random bits, so a stolen database gives nothing to guess from."""
    return hashlib.sha256(token.encode()).hexdigest()


# A new key waits for its one showing (the page a form post redirects to) under a random
# one-time token that only the browser holds, in a cookie.
REVEAL_TOKEN_BYTES = 32


def new_reveal_token() -> str:
    return secrets.token_urlsafe(REVEAL_TOKEN_BYTES)


def reveal_token_hash(token: str) -> str:
    """What the database finds a waiting key by: never the token, which unseals the key."""
    return hashlib.sha256(b"hostd key reveal id\0" + token.encode()).hexdigest()


def seal_key(token: str, key: str) -> str:
    """`key` encrypted under the one-time `token` (hex): XOR with a SHAKE-256 stream of the
    token. The token is 256 random bits used for this one key, so the stream is a one-time
    pad; the database, which never sees the token, holds nothing that gives the key away."""
    data = key.encode()
    return bytes(a ^ b for a, b in zip(data, _pad(token, len(data)), strict=True)).hex()


def unseal_key(token: str, sealed: str) -> str | None:
    """The key seal_key() sealed with this token; None if it does not unseal to one."""
    try:
        data = bytes.fromhex(sealed)
        key = bytes(a ^ b for a, b in zip(data, _pad(token, len(data)), strict=True)).decode()
    except ValueError:  # not hex, or not UTF-8
        return None
    return key if parse_key(key) is not None else None


def _pad(token: str, length: int) -> bytes:
    return hashlib.shake_256(b"hostd key reveal pad\0" + token.encode()).digest(length)


def secret_fingerprint(secret: str) -> str:
    """What the database records of the cookie secret: an Argon2 hash (the key profile),
    so that every process can check it has the same secret, and a stolen database does not
    give it away. Blocking: run it off the IOLoop."""
    return argon2.PasswordHasher.from_parameters(KEY_PROFILE).hash(secret)


def fingerprint_matches(fingerprint: str, secret: str) -> bool:
    """Blocking, like secret_fingerprint()."""
    return _verify(argon2.PasswordHasher.from_parameters(KEY_PROFILE), fingerprint, secret)


class Busy(Exception):
    """Too many Argon2 jobs are waiting already; the caller should answer 503."""


class AccountDisabled(Exception):
    """A valid key (the right secret) of an account that `hostd user disable` stopped: only
    the key's holder learns why it opens nothing, as a password's holder does at sign-in."""


class _Lane:
    """One thread for one kind of Argon2 job, with a bounded queue in front of it.

    Jobs wait here, not in the executor, so that the lane can choose who goes next: urgent
    jobs (sign-ins) before patient ones (new accounts), which may also hold only `max_patient`
    of the `max_waiting` places, so that a flood of them always leaves room for sign-ins.
    """

    def __init__(self, name: str, max_waiting: int, max_patient: int | None = None) -> None:
        # Argon2 holds a CPU for tens of milliseconds without the GIL: any CPU will do.
        self._pool = ThreadPoolExecutor(1, f"argon2-{name}", initializer=affinity.roam)
        self._max_waiting = max_waiting
        self._max_patient = max_waiting if max_patient is None else max_patient
        self._waiting = 0  # jobs in the lane, the running one included
        self._patient = 0
        self._running = False
        self._turns: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (
            deque(),
            deque(),
        )

    async def run(self, fn: Callable[..., R], *args: Any, urgent: bool = True) -> R:
        if self._waiting >= self._max_waiting or (
            not urgent and self._patient >= self._max_patient
        ):
            raise Busy
        self._waiting += 1
        self._patient += not urgent
        try:
            await self._take_turn(self._turns[0 if urgent else 1])
            try:
                return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
            finally:
                self._hand_on()
        finally:
            self._waiting -= 1
            self._patient -= not urgent

    async def _take_turn(self, queue: deque[asyncio.Future[None]]) -> None:
        if not self._running:
            self._running = True
            return
        turn = asyncio.get_running_loop().create_future()
        queue.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # handed the lane as we were cancelled
                self._hand_on()
            raise

    def _hand_on(self) -> None:
        """Pass the lane to the next waiting job, urgent ones first; `_running` stays True."""
        for queue in self._turns:
            while queue:
                turn = queue.popleft()
                if not turn.done():  # a cancelled waiter has given up its place
                    turn.set_result(None)
                    return
        self._running = False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Auth:
    """Argon2 hashing and verification, off the IOLoop, one job of each kind at a time.

    Passwords and API keys each have their own thread, so a flood of sign-ins can neither
    hold up keyed uploads nor run more than one 64 MiB password hash at once; each has a
    bounded queue, past which callers get Busy rather than a wait without end. New accounts'
    hashes wait behind sign-ins and may hold only half of the password queue, so that a flood
    of registrations cannot keep owners from signing in.
    """

    def __init__(
        self,
        password_hasher: argon2.PasswordHasher | None = None,
        key_hasher: argon2.PasswordHasher | None = None,
        *,
        cache_size: int = 4096,
        max_waiting_passwords: int = 8,
        max_waiting_keys: int = 64,
    ) -> None:
        self.passwords = password_hasher or argon2.PasswordHasher.from_parameters(PASSWORD_PROFILE)
        self.keys = key_hasher or argon2.PasswordHasher.from_parameters(KEY_PROFILE)
        self._password_lane = _Lane(
            "password", max_waiting_passwords, max(1, max_waiting_passwords // 2)
        )
        self._key_lane = _Lane("key", max_waiting_keys)
        # Unknown ids and invalidated keys (and unknown users) are checked against these, so
        # that every rejection costs one Argon2 verification, like a wrong secret. They are
        # made on first need, not here: a password hash takes 64 MiB for a moment, which
        # would double the RSS of a server that has not yet done anything.
        self._dummy_key_hash: str | None = None
        self._dummy_password_hash: str | None = None
        self._verified: Cache[bytes, ApiKey] = Cache(cache_size)  # digest of key -> its row
        self._uses: dict[int, int] = {}  # api_keys.id -> when this process last wrote a use
        self._watching: Database | None = None
        self._checking: dict[tuple[bytes, str], asyncio.Future[bool]] = {}
        self._cache_size = cache_size
        # For /metrics: Argon2 verifications run, by kind, and keys the cache let through.
        self.verifications = {"password": 0, "key": 0}
        self.key_cache_hits = 0

    def close(self) -> None:
        self._password_lane.close()
        self._key_lane.close()

    # -- passwords --

    async def hash_password(self, password: str, *, new_account: bool = False) -> str:
        """The stored form of a password. `new_account`: a registration's, which waits
        behind sign-ins (and other urgent work, such as the admin's commands)."""
        return await self._password_lane.run(self.passwords.hash, password, urgent=not new_account)

    async def check_password(self, user: User | None, password: str) -> tuple[bool, str | None]:
        """(valid, new hash when the stored one uses old parameters). An unknown user is
        checked against a dummy hash, so the answer takes as long as for a wrong password."""
        if self._dummy_password_hash is None:  # made before any check, known user or not
            self._dummy_password_hash = await self.hash_password(secrets.token_urlsafe(16))
        stored = user.password_hash if user else self._dummy_password_hash
        ok = await self._password_lane.run(_verify, self.passwords, stored, password)
        self.verifications["password"] += 1
        if not ok or user is None:
            return False, None
        if self.passwords.check_needs_rehash(stored):
            return True, await self.hash_password(password)
        return True, None

    # -- API keys --

    async def mint_key(self) -> MintedKey:
        key_id = secrets.token_hex(KEY_ID_BYTES)
        secret = secrets.token_urlsafe(KEY_SECRET_BYTES)
        secret_hash = await self._key_lane.run(self.keys.hash, secret)
        return MintedKey(f"{KEY_PREFIX}{key_id}_{secret}", key_id, secret_hash)

    async def verify_key(
        self, database: Database, token: str, admit: Callable[[], None] | None = None
    ) -> ApiKey | None:
        """The usable key this token is, or None; AccountDisabled for a valid key of a
        disabled account. `admit`, if any, is called before the Argon2 check of a token
        that names no usable key (an unknown or malformed id, an invalidated key, a disabled
        account's): it may raise, to refuse a client that has sent too many invalid keys.
        A token naming a usable key is always checked, so that a key made to replace a
        mistyped one works at once; guessing a usable key's 64-bit id is out of reach.

        Argon2 runs only the first time a token is seen: after that a digest of the whole
        token stands for it, with its row, in a bounded in-memory cache, and a known key
        costs no database read. The cache is forgotten whenever any process invalidates or
        deletes a key, or disables or removes an account (database.changes), so that such a
        change takes effect on the very next request, in every process.
        """
        self._watch(database)
        database.changes.check()
        digest = hashlib.sha256(token.encode()).digest()
        known = self._verified.get(digest)
        if known is not None:
            self.key_cache_hits += 1
            return known
        generation = self._verified.generation
        parsed = parse_key(token)
        key = await db.get_api_key(database, key_id=parsed[0]) if parsed else None
        if admit is not None and (key is None or not key.usable or key.account_disabled):
            admit()
        if self._dummy_key_hash is None:  # made before any slow check, good key or not
            self._dummy_key_hash = await self._key_lane.run(
                self.keys.hash, secrets.token_urlsafe(KEY_SECRET_BYTES)
            )
        stored = key.secret_hash if key is not None and key.usable else self._dummy_key_hash
        secret = parsed[1] if parsed else token
        # Requests that bring the same token while it is being checked share that check:
        # a burst from a client's first use of its key costs one verification, not one each.
        # A check that ended while this request read the row has cached its key already.
        check = self._checking.get((digest, stored))
        if check is None and (known := self._verified.get(digest)) is not None:
            self.key_cache_hits += 1
            return known
        if check is None:
            check = asyncio.ensure_future(self._key_lane.run(_verify, self.keys, stored, secret))
            self.verifications["key"] += 1
            self._checking[(digest, stored)] = check
            usable = key if key is not None and key.usable and not key.account_disabled else None

            def settle(done: asyncio.Future[bool]) -> None:
                # Cached as the check ends, before any waiter resumes, so that no request
                # arriving in between starts a check of its own. Not kept if any change was
                # seen meanwhile: the row read may predate it.
                self._checking.pop((digest, stored), None)
                passed = not done.cancelled() and done.exception() is None and done.result()
                if usable is not None and passed:
                    self._verified.put(digest, usable, generation)

            check.add_done_callback(settle)
        ok = await asyncio.shield(check)
        if not ok or key is None or not key.usable:
            return None
        if key.account_disabled:  # `hostd user disable`: checked as any key, then refused
            raise AccountDisabled(key.key_id)
        return key

    def _watch(self, database: Database) -> None:
        if self._watching is not database:
            self._watching = database
            self._forget_keys()
            database.changes.subscribe(self._forget_keys)

    def _forget_keys(self) -> None:
        self._verified.clear()
        self._uses.clear()

    def note_use(self, key: ApiKey, at: int, every: int) -> bool:
        """Whether this use of a key should be written to its row (last_used_at): only when
        none was for `every` seconds. The row a verified key comes with may be older than
        this process's last write, so the process remembers its own."""
        known = [t for t in (key.last_used_at, self._uses.get(key.id)) if t is not None]
        if known and at - max(known) < every:
            return False
        self._uses[key.id] = at
        while len(self._uses) > self._cache_size:
            del self._uses[next(iter(self._uses))]
        return True


def _verify(hasher: argon2.PasswordHasher, stored: str, secret: str) -> bool:
    try:
        return bool(hasher.verify(stored, secret))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
