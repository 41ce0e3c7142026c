"""Failed sign-ins, counted in the database so that every process holds guessers alike
(the policy is hostd.throttle.SignInLimiter's)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hostd.db.core import POSTGRESQL, Database, Tx

# An attempt in flight counts until it ends, or this long after the latest began: the
# attempts of a process that died must not hold anyone for good.
IN_FLIGHT_SECONDS = 60.0
# PostgreSQL: the transaction-scoped advisory lock that every unit of this module takes
# first (see _take_turns).
SIGNIN_LOCK = 0x7369676E696E  # "signin"


async def _take_turns(tx: Tx) -> None:
    """Make the sign-in units of all processes run one after the other.

    On SQLite every writer's transaction is BEGIN IMMEDIATE, so that holds already. On
    PostgreSQL two processes' writers run at once under READ COMMITTED: both could read a
    count, both find room, and both count themselves in. So each unit first takes one
    advisory lock, held until its batch commits. One lock for the whole module, not one
    per key: a batch may hold several sign-in units whose keys, locked key by key, could
    cross another process's batch in the opposite order (a deadlock); with one lock taken
    before any sign-in row, two batches never wait on each other over these tables. Sign-ins
    are rare (each costs an Argon2 check), so taking turns costs nothing that shows."""
    if tx.dialect == POSTGRESQL:
        await tx.execute("SELECT pg_advisory_xact_lock(?)", (SIGNIN_LOCK,))


@dataclass(frozen=True)
class SignInCount:
    """One count: failures, and attempts in flight (only those begun in the last minute)."""

    key: str
    failures: int
    last_failure_at: float | None
    in_flight: int


Wait = Callable[[SignInCount, int, float], float]  # (count, free failures, now) -> seconds


async def begin_signin(
    db: Database,
    *,
    counts: dict[str, int],
    unless_known: tuple[str, str, int],
    now: float,
    window: float,
    remember: float,
    wait: Wait,
) -> tuple[float, dict[str, int]]:
    """Begin a sign-in attempt, in one unit of work so that parallel attempts (from any
    process) are counted in turn: (0, the counts it holds) when it may go on, each counting
    it in flight; else (seconds to wait, {}), counting nothing.

    `counts` maps each count's key to its free failures; `unless_known` = (pair, key, free)
    adds a count unless that (account, address) pair signed in within `remember` seconds.
    A count with nothing in flight is forgotten `window` seconds after its last failure."""

    async def work(tx: Tx) -> tuple[float, dict[str, int]]:
        await _take_turns(tx)
        await tx.execute("DELETE FROM signin_counts WHERE touched_at < ?", (now - window,))
        await tx.execute("DELETE FROM signin_known WHERE signed_in_at < ?", (now - remember,))
        pair, key, free = unless_known
        taken = dict(counts)
        known = await tx.fetchone("SELECT 1 FROM signin_known WHERE pair = ?", (pair,))
        if known is None:
            taken[key] = free
        marks = ",".join("?" * len(taken))
        rows = await tx.fetchall(
            f"""
            SELECT key, failures, last_failure_at,
                   CASE WHEN in_flight_at >= ? THEN in_flight ELSE 0 END AS in_flight
            FROM signin_counts WHERE key IN ({marks})
            """,
            (now - IN_FLIGHT_SECONDS, *taken),
        )
        longest = 0.0
        for row in rows:
            count = SignInCount(*row)
            last = count.last_failure_at
            if count.in_flight == 0 and last is not None and now - last > window:
                await tx.execute("DELETE FROM signin_counts WHERE key = ?", (count.key,))
                continue
            longest = max(longest, wait(count, taken[count.key], now))
        if longest > 0:
            return longest, {}
        await tx.executemany(
            """
            INSERT INTO signin_counts (key, in_flight, in_flight_at, touched_at)
            VALUES (?, 1, ?, ?)
            ON CONFLICT (key) DO UPDATE SET
                in_flight = CASE WHEN signin_counts.in_flight_at >= ?
                                 THEN signin_counts.in_flight + 1 ELSE 1 END,
                in_flight_at = excluded.in_flight_at,
                touched_at = excluded.touched_at
            """,
            [(key, now, now, now - IN_FLIGHT_SECONDS) for key in taken],
        )
        return 0.0, taken

    return await db.write(work)


async def end_signin(
    db: Database, *, keys: list[str], now: float, failed: bool, known_pair: str | None = None
) -> None:
    """End an attempt begun with begin_signin: out of flight, one more failure if it
    `failed`. With `known_pair` (a success), that pair's own count goes and the pair is
    remembered as one that signed in."""

    async def work(tx: Tx) -> None:
        await _take_turns(tx)
        if failed:  # counted even if the row went meanwhile (a success, a sweep)
            await tx.executemany(
                """
                INSERT INTO signin_counts (key, failures, last_failure_at, touched_at)
                VALUES (?, 1, ?, ?)
                ON CONFLICT (key) DO UPDATE SET
                    in_flight = CASE WHEN signin_counts.in_flight > 0
                                     THEN signin_counts.in_flight - 1 ELSE 0 END,
                    failures = signin_counts.failures + 1,
                    last_failure_at = excluded.last_failure_at,
                    touched_at = excluded.touched_at
                """,
                [(key, now, now) for key in keys],
            )
        else:
            await tx.executemany(
                """
                UPDATE signin_counts
                SET in_flight = CASE WHEN in_flight > 0 THEN in_flight - 1 ELSE 0 END
                WHERE key = ?
                """,
                [(key,) for key in keys],
            )
            await tx.executemany(
                "DELETE FROM signin_counts WHERE key = ? AND failures = 0 AND in_flight = 0",
                [(key,) for key in keys],
            )
        if known_pair is not None:
            await tx.execute("DELETE FROM signin_counts WHERE key = ?", (known_pair,))
            await tx.execute(
                """
                INSERT INTO signin_known (pair, signed_in_at) VALUES (?, ?)
                ON CONFLICT (pair) DO UPDATE SET signed_in_at = excluded.signed_in_at
                """,
                (known_pair, now),
            )

    if keys or known_pair is not None:
        await db.write(work)
