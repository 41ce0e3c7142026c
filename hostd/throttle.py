"""Throttles for sign-ins (counted in the database), and registrations, invalid API keys and
uploads (bounded, in memory), per address and account."""

from __future__ import annotations

import functools
import ipaddress
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from hostd import db
from hostd.db import Database


@functools.lru_cache(maxsize=4096)
def address_key(ip: str) -> str:
    """Who an address is, for throttling: an IPv4 address, or the /64 an IPv6 address is in
    (one customer's network usually; its 2**64 addresses must not each get their own budget).
    Remembered: the same few addresses come back, and ipaddress takes tens of microseconds."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class AddressCounts:
    """How many of something each client address (address_key) has going now, and how
    many in all: connections open (server.OpenConnections), big downloads being sent
    (DownloadsInFlight). Its users set the caps and say what a refusal says."""

    def __init__(self) -> None:
        self._by_address: Counter[str] = Counter()
        self.total = 0

    def count_of(self, ip: str) -> tuple[str, int]:
        """The address `ip` counts under, and its count now."""
        address = address_key(ip)
        return address, self._by_address[address]

    def count_in(self, address: str) -> None:
        self._by_address[address] += 1
        self.total += 1

    def leave(self, address: str) -> None:
        self.total -= 1
        self._by_address[address] -= 1
        if not self._by_address[address]:
            del self._by_address[address]


class SignInLimiter:
    """Slows down password guessing without handing anyone a switch that locks an owner out.

    Failed sign-ins are counted three ways: per account and address (`per_pair` free
    failures), per address over all accounts (`per_address`), and per account over all
    addresses (`per_account`, much higher; it does not hold up an address that has signed in
    to that account in the last `remember` seconds). Past a count's free failures, each
    further attempt waits a delay that doubles from 1 s per failure, up to `max_delay`; a
    count is forgotten `window` seconds after its last failure, so guessing at the pace of the
    waits never resets it. A success clears its own (account, address) count only. "Address"
    is as address_key() says.

    Attempts in flight count as failures until they end, so that guesses sent in parallel are
    held too; one that ends with no answer about the password (the server was busy) counts
    nothing. The counts live in the database (hostd.db.signins), so that every process on it
    holds a guesser alike: N processes do not give N times the guesses. `clock` is the wall
    clock (epoch seconds), which every process shares.
    """

    def __init__(
        self,
        database: Database,
        *,
        per_pair: int = 5,
        per_address: int = 20,
        per_account: int = 100,
        window: float = 900.0,
        max_delay: float = 300.0,
        remember: float = 30 * 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = database
        self.per_pair = per_pair
        self.per_address = per_address
        self.per_account = per_account
        self.window = window
        self.max_delay = max_delay
        self.remember = remember
        self._clock = clock
        self.refused = 0  # attempts told to wait (429), for /metrics

    def attempt(self, account: str, ip: str) -> SignInAttempt:
        """A sign-in attempt, to be entered with `async with`; if its `wait` is then above 0,
        it must not go on (429)."""
        # No name is longer than 64 characters: a longer one still counts, in little room.
        account, address = account.lower()[:65], address_key(ip)
        return SignInAttempt(self, account, address)

    def _wait(self, count: db.SignInCount, free: int, now: float) -> float:
        wait = 0.0
        if count.failures >= free and count.last_failure_at is not None:
            blocked_until = count.last_failure_at + self._delay(count.failures - free)
            wait = max(0.0, blocked_until - now)
        used = count.failures + count.in_flight
        if used >= free and count.in_flight:  # one attempt at a time past the free ones
            wait = max(wait, self._delay(used - free))
        return wait

    def _delay(self, over: int) -> float:
        return min(self.max_delay, 2.0 ** min(over, 64))


class SignInAttempt:
    """One sign-in between SignInLimiter.attempt() and its outcome. Used as an async context
    manager: leaving it without calling failed() or succeeded() counts nothing."""

    def __init__(self, limiter: SignInLimiter, account: str, address: str) -> None:
        self._limiter = limiter
        self._pair = f"pair:{account} {address}"
        self._account = account
        self._address = address
        self._keys: list[str] = []
        self.wait = 0.0

    async def __aenter__(self) -> SignInAttempt:
        limiter = self._limiter
        self.wait, keys = await db.begin_signin(
            limiter.db,
            counts={self._pair: limiter.per_pair, f"addr:{self._address}": limiter.per_address},
            unless_known=(self._pair, f"acct:{self._account}", limiter.per_account),
            now=limiter._clock(),
            window=limiter.window,
            remember=limiter.remember,
            wait=limiter._wait,
        )
        self._keys = list(keys)
        if self.wait > 0:
            limiter.refused += 1
        return self

    async def failed(self) -> None:
        keys, self._keys = self._keys, []
        await db.end_signin(self._limiter.db, keys=keys, now=self._limiter._clock(), failed=True)

    async def succeeded(self) -> None:
        keys, self._keys = self._keys, []
        await db.end_signin(
            self._limiter.db,
            keys=keys,
            now=self._limiter._clock(),
            failed=False,
            known_pair=self._pair,
        )

    async def __aexit__(self, *exc_info: object) -> None:
        keys, self._keys = self._keys, []
        await db.end_signin(self._limiter.db, keys=keys, now=self._limiter._clock(), failed=False)


class AddressLimiter:
    """At most `limit` of something from one address (see address_key) in `window` seconds:
    new accounts (accounts.registrations_per_hour), API keys that fail their check
    (limits.invalid_keys_per_hour).

    An attempt is counted when it starts, so that parallel ones are counted too;
    give_back() hands its place back when it was not the client's fault (the server was
    busy) or it turned out good (a valid key). Memory is bounded to `max_entries` addresses.
    """

    def __init__(
        self,
        limit: int,
        window: float = 3600.0,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_entries = max_entries
        self._clock = clock
        self._times: OrderedDict[str, deque[float]] = OrderedDict()
        self.refused = 0  # attempts told to wait (429), for /metrics

    def take(self, ip: str) -> float:
        """Count one attempt from this address: 0 if it may go on, else the seconds until
        it may (and nothing is counted)."""
        address, now = address_key(ip), self._clock()
        times = self._times.setdefault(address, deque())
        self._times.move_to_end(address)
        while times and now - times[0] >= self.window:
            times.popleft()
        if len(times) >= self.limit:
            self.refused += 1
            return times[0] + self.window - now
        times.append(now)
        while len(self._times) > self.max_entries:
            self._times.popitem(last=False)
        return 0.0

    def give_back(self, ip: str) -> None:
        times = self._times.get(address_key(ip))
        if times:
            times.pop()


@dataclass
class _Bucket:
    tokens: float
    at: float


class UploadLimiter:
    """Upload budgets for each address and each API key: `per_minute` uploads and
    `bytes_per_hour` bytes of request body (either None: no such budget).

    Each budget is a token bucket: full at first, so a whole minute's uploads (or an
    hour's bytes) may come at once, and refilled steadily at that rate. An upload counts
    when it starts; its bytes count as they are taken in, so that parallel uploads are held
    too. What is refused counts nothing: an upload refused before its body, and a piece of
    body refused because the byte budget is spent (the client may send it again later).
    Memory is bounded: past `max_entries` buckets the least recently used go (a bucket
    forgotten is a full one), and a bucket that has refilled is dropped.
    """

    def __init__(
        self,
        *,
        per_minute: int | None,
        bytes_per_hour: int | None,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = per_minute
        self.bytes_per_hour = bytes_per_hour
        self.max_entries = max_entries
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def start(self, subjects: list[str], length: int | None) -> tuple[float, float]:
        """Count the start of one upload for each subject. Returns the seconds to wait for
        the upload count and for the byte budget: both 0 when it may go on; otherwise
        nothing is counted. With a `length` (the body's Content-Length) the byte budget
        must have room for all of it; the bytes themselves count as they arrive."""
        now = self._clock()
        count_wait = 0.0
        for subject in subjects:
            if self.per_minute is not None:
                tokens = self._level(f"n:{subject}", self.per_minute, 60.0, now)
                count_wait = max(count_wait, (1 - tokens) * 60.0 / self.per_minute)
        bytes_wait = self.bytes_wait(subjects, length)
        if count_wait > 0 or bytes_wait > 0:
            return count_wait, bytes_wait
        if self.per_minute is not None:
            for subject in subjects:
                self._take(f"n:{subject}", self.per_minute, 60.0, 1, now)
        return 0.0, 0.0

    def bytes_wait(self, subjects: list[str], length: int | None) -> float:
        """The seconds until every subject's byte budget has room for a body of `length`
        bytes (None, chunked: for its first byte); 0 when it has. Counts nothing."""
        if self.bytes_per_hour is None:
            return 0.0
        now = self._clock()
        need = min(length or 1, self.bytes_per_hour)
        wait = 0.0
        for subject in subjects:
            tokens = self._level(f"b:{subject}", self.bytes_per_hour, 3600.0, now)
            wait = max(wait, (need - tokens) * 3600.0 / self.bytes_per_hour)
        return wait

    def received(self, subjects: list[str], size: int) -> float:
        """Take in `size` bytes of body, if every subject's byte budget has some left, and
        return 0; the piece may overdraw it, and the debt is paid before more is taken.
        Else count nothing and return the seconds until the budget has a byte again (the
        upload must stop, and the piece is not taken)."""
        if self.bytes_per_hour is None:
            return 0.0
        now = self._clock()
        lowest = min(
            (self._level(f"b:{subject}", self.bytes_per_hour, 3600.0, now) for subject in subjects),
            default=1.0,
        )
        if lowest <= 0:  # spent: wait until it has a byte again
            return (1 - lowest) * 3600.0 / self.bytes_per_hour
        for subject in subjects:
            self._take(f"b:{subject}", self.bytes_per_hour, 3600.0, size, now)
        return 0.0

    def _level(self, key: str, capacity: int, period: float, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            return float(capacity)
        tokens = min(float(capacity), bucket.tokens + (now - bucket.at) * capacity / period)
        if tokens >= capacity:
            del self._buckets[key]  # full again: nothing to remember
        return tokens

    def _take(self, key: str, capacity: int, period: float, amount: int, now: float) -> float:
        tokens = self._level(key, capacity, period, now) - amount
        self._buckets[key] = _Bucket(tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_entries:
            self._buckets.popitem(last=False)
        return tokens

    def __len__(self) -> int:
        return len(self._buckets)
