"""Failed sign-ins, counted in the database so that every process holds guessers alike
(the policy is hostd.throttle.SignInLimiter's)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from hostd.db.core import Database

# An attempt in flight counts until it ends, or this long after the latest began: the
# attempts of a process that died must not hold anyone for good.
IN_FLIGHT_SECONDS = 60.0


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

    def work(conn: sqlite3.Connection) -> tuple[float, dict[str, int]]:
        conn.execute("DELETE FROM signin_counts WHERE touched_at < ?", (now - window,))
        conn.execute("DELETE FROM signin_known WHERE signed_in_at < ?", (now - remember,))
        pair, key, free = unless_known
        taken = dict(counts)
        known = conn.execute("SELECT 1 FROM signin_known WHERE pair = ?", (pair,)).fetchall()
        if not known:
            taken[key] = free
        marks = ",".join("?" * len(taken))
        rows = conn.execute(
            f"""
            SELECT key, failures, last_failure_at,
                   CASE WHEN in_flight_at >= ? THEN in_flight ELSE 0 END AS in_flight
            FROM signin_counts WHERE key IN ({marks})
            """,
            (now - IN_FLIGHT_SECONDS, *taken),
        ).fetchall()
        longest = 0.0
        for row in rows:
            count = SignInCount(*row)
            last = count.last_failure_at
            if count.in_flight == 0 and last is not None and now - last > window:
                conn.execute("DELETE FROM signin_counts WHERE key = ?", (count.key,))
                continue
            longest = max(longest, wait(count, taken[count.key], now))
        if longest > 0:
            return longest, {}
        conn.executemany(
            """
            INSERT INTO signin_counts (key, in_flight, in_flight_at, touched_at)
            VALUES (?, 1, ?, ?)
            ON CONFLICT (key) DO UPDATE SET
                in_flight = CASE WHEN in_flight_at >= ? THEN in_flight + 1 ELSE 1 END,
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

    def work(conn: sqlite3.Connection) -> None:
        if failed:  # counted even if the row went meanwhile (a success, a sweep)
            conn.executemany(
                """
                INSERT INTO signin_counts (key, failures, last_failure_at, touched_at)
                VALUES (?, 1, ?, ?)
                ON CONFLICT (key) DO UPDATE SET
                    in_flight = CASE WHEN in_flight > 0 THEN in_flight - 1 ELSE 0 END,
                    failures = failures + 1,
                    last_failure_at = excluded.last_failure_at,
                    touched_at = excluded.touched_at
                """,
                [(key, now, now) for key in keys],
            )
        else:
            conn.executemany(
                """
                UPDATE signin_counts
                SET in_flight = CASE WHEN in_flight > 0 THEN in_flight - 1 ELSE 0 END
                WHERE key = ?
                """,
                [(key,) for key in keys],
            )
            conn.executemany(
                "DELETE FROM signin_counts WHERE key = ? AND failures = 0 AND in_flight = 0",
                [(key,) for key in keys],
            )
        if known_pair is not None:
            conn.execute("DELETE FROM signin_counts WHERE key = ?", (known_pair,))
            conn.execute(
                """
                INSERT INTO signin_known (pair, signed_in_at) VALUES (?, ?)
                ON CONFLICT (pair) DO UPDATE SET signed_in_at = excluded.signed_in_at
                """,
                (known_pair, now),
            )

    if keys or known_pair is not None:
        await db.write(work)
