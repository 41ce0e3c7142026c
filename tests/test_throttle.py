"""The sign-in throttle (on the real database) and the registration throttle, on an injected
clock."""

from __future__ import annotations

import asyncio

import pytest

from hostd import db as queries
from hostd.throttle import AddressLimiter, SignInLimiter, UploadLimiter, address_key


async def wait(limiter, account, address):
    """The wait a sign-in would be given now (the attempt is ended at once: it counts nothing)."""
    async with limiter.attempt(account, address) as attempt:
        return attempt.wait


async def fail(limiter, clock, account, address, times=1):
    """`times` failed sign-ins, each sent as soon as the limiter lets it through."""
    for _ in range(times):
        clock.advance(await wait(limiter, account, address))
        async with limiter.attempt(account, address) as attempt:
            assert attempt.wait == 0
            await attempt.failed()


async def succeed(limiter, account, address):
    async with limiter.attempt(account, address) as attempt:
        await attempt.succeeded()


async def rows(db):
    """What the database holds for the throttle: counts, and remembered successes."""
    row = await db.read(
        lambda tx: tx.fetchone(
            "SELECT (SELECT count(*) FROM signin_counts), (SELECT count(*) FROM signin_known)"
        )
    )
    return tuple(row)


@pytest.mark.gen_test
async def test_each_account_and_address_gets_five_free_failures_then_a_doubling_wait(db, clock):
    limiter = SignInLimiter(db, clock=clock)

    waits = []
    for _ in range(8):
        waits.append(await wait(limiter, "ann", "192.0.2.1"))
        await fail(limiter, clock, "ann", "192.0.2.1")

    assert waits == [0, 0, 0, 0, 0, 1.0, 2.0, 4.0]
    assert await wait(limiter, "ann", "192.0.2.2") == 0  # another address: its own budget


@pytest.mark.gen_test
async def test_the_wait_stops_doubling_at_five_minutes(db, clock):
    limiter = SignInLimiter(db, clock=clock)

    await fail(limiter, clock, "ann", "192.0.2.1", times=20)

    assert await wait(limiter, "ann", "192.0.2.1") == 300.0


@pytest.mark.gen_test
async def test_an_address_gets_twenty_free_failures_over_all_accounts(db, clock):
    limiter = SignInLimiter(db, clock=clock)

    for i in range(20):
        await fail(limiter, clock, f"user{i}", "192.0.2.1")

    assert await wait(limiter, "someone-else", "192.0.2.1") == 1.0
    assert await wait(limiter, "someone-else", "192.0.2.2") == 0


@pytest.mark.gen_test
async def test_an_account_is_held_after_a_hundred_failures_except_where_it_signed_in_before(
    db, clock
):
    limiter = SignInLimiter(db, clock=clock)
    await succeed(limiter, "ann", "192.0.2.1")

    for i in range(20):
        await fail(limiter, clock, "ann", f"198.51.100.{i}", times=5)

    assert await wait(limiter, "ann", "203.0.113.9") == 1.0
    assert await wait(limiter, "ann", "192.0.2.1") == 0


@pytest.mark.gen_test
async def test_a_success_is_remembered_for_thirty_days(db, clock):
    limiter = SignInLimiter(db, per_account=10, clock=clock)
    await succeed(limiter, "ann", "192.0.2.1")
    clock.advance(30 * 86400 + 1)

    await fail(limiter, clock, "ann", "198.51.100.1", times=5)
    await fail(limiter, clock, "ann", "198.51.100.2", times=6)

    assert await wait(limiter, "ann", "192.0.2.1") == 2.0


@pytest.mark.gen_test
async def test_a_count_is_forgotten_fifteen_minutes_after_its_last_failure(db, clock):
    limiter = SignInLimiter(db, clock=clock)
    start = clock.now

    await fail(limiter, clock, "ann", "192.0.2.1", times=17)  # at the pace of the waits
    held = await wait(limiter, "ann", "192.0.2.1")
    clock.advance(900)
    still = await wait(limiter, "ann", "192.0.2.1")
    clock.advance(1)

    assert clock.now - start > 2 * 900  # longer than the window: guessing did not reset it
    assert held == 300.0 and still == 0
    free_again = []
    for _ in range(6):
        free_again.append(await wait(limiter, "ann", "192.0.2.1"))
        await fail(limiter, clock, "ann", "192.0.2.1")
    assert free_again == [0, 0, 0, 0, 0, 1.0]


@pytest.mark.gen_test
async def test_a_success_clears_its_own_account_and_address_only(db, clock):
    limiter = SignInLimiter(db, per_address=6, clock=clock)
    await fail(limiter, clock, "ann", "192.0.2.1", times=5)
    await fail(limiter, clock, "bob", "192.0.2.1")

    clock.advance(await wait(limiter, "ann", "192.0.2.1"))
    await succeed(limiter, "ann", "192.0.2.1")
    await fail(limiter, clock, "cid", "192.0.2.1")

    assert await wait(limiter, "ann", "192.0.2.1") == 2.0  # the address's count: 7th failure


@pytest.mark.gen_test
async def test_attempts_in_flight_count_and_one_without_an_outcome_counts_nothing(db, clock):
    limiter = SignInLimiter(db, clock=clock)

    in_flight = [limiter.attempt("ann", "192.0.2.1") for _ in range(5)]
    for attempt in in_flight:
        await attempt.__aenter__()
    sixth = await wait(limiter, "ann", "192.0.2.1")
    for attempt in in_flight:  # end with neither failed() nor succeeded(): the server was busy
        await attempt.__aexit__(None, None, None)

    assert sixth == 1.0
    assert await wait(limiter, "ann", "192.0.2.1") == 0
    assert await rows(db) == (0, 0)


@pytest.mark.gen_test
async def test_attempts_left_in_flight_by_a_process_that_died_stop_counting(db, clock):
    limiter = SignInLimiter(db, clock=clock)
    for _ in range(5):
        await limiter.attempt("ann", "192.0.2.1").__aenter__()  # never ended

    held = await wait(limiter, "ann", "192.0.2.1")
    clock.advance(61)

    assert held == 1.0
    assert await wait(limiter, "ann", "192.0.2.1") == 0


@pytest.mark.gen_test
async def test_every_limiter_on_one_database_counts_together(db, clock):
    one, other = SignInLimiter(db, clock=clock), SignInLimiter(db, clock=clock)

    for limiter in (one, other, one, other, one):
        await fail(limiter, clock, "ann", "192.0.2.1")

    assert await wait(other, "ann", "192.0.2.1") == 1.0


@pytest.mark.gen_test
async def test_old_counts_and_successes_leave_the_database(db, clock):
    limiter = SignInLimiter(db, remember=3600, clock=clock)
    for i in range(50):
        await fail(limiter, clock, f"user{i}", f"10.0.0.{i}")
        await succeed(limiter, f"user{i}", "192.0.2.1")
    filled = await rows(db)

    clock.advance(3601)
    await wait(limiter, "someone", "192.0.2.9")

    assert filled == (150, 50)  # a failure: its pair, address and account; the successes
    assert await rows(db) == (0, 0)


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
    ],
)
def test_an_address_is_an_ipv4_address_or_an_ipv6_64(ip, key):
    assert address_key(ip) == key


def test_registrations_are_limited_per_address_per_hour(clock):
    registrations = AddressLimiter(2, clock=clock)

    waits = [registrations.take("192.0.2.1") for _ in range(3)]
    registrations.give_back("192.0.2.1")
    given_back = registrations.take("192.0.2.1")
    clock.advance(3600)

    assert waits == [0, 0, 3600.0]
    assert given_back == 0
    assert registrations.take("192.0.2.1") == 0
    assert registrations.take("2001:db8::1") == registrations.take("2001:db8::2") == 0
    assert registrations.take("2001:db8::3") > 0  # one /64


def test_upload_bytes_count_as_taken_in_and_a_refused_piece_counts_nothing(clock):
    budgets = UploadLimiter(per_minute=None, bytes_per_hour=1000, clock=clock)
    address = ["addr:192.0.2.1"]

    taken = [budgets.received(address, 600) for _ in range(2)]  # the second overdraws
    refused = [budgets.received(address, 600) for _ in range(3)]
    clock.advance(723.6)
    again = budgets.received(address, 600)

    assert taken == [0, 0]
    # 200 bytes in debt: a byte back takes 201 * 3.6 s, however often a piece is refused.
    assert refused == [pytest.approx(723.6)] * 3
    assert again == 0


def test_a_refused_upload_costs_no_bytes_of_the_budget(clock):
    budgets = UploadLimiter(per_minute=None, bytes_per_hour=1000, clock=clock)
    address = ["addr:192.0.2.1"]
    budgets.received(address, 600)

    waits = [budgets.start(address, 600) for _ in range(3)]

    assert waits == [(0, pytest.approx(720))] * 3
    assert budgets.bytes_wait(address, 400) == 0


@pytest.mark.gen_test(timeout=60)
async def test_parallel_attempts_from_two_processes_are_counted_one_after_the_other(
    db, other_process
):
    """The check (may this attempt go on?) and the count (one more in flight) are one step
    for all processes: with room for one attempt in flight, twenty begun at once through two
    processes' writers let exactly one through (on PostgreSQL, where two writers run at
    once, by an advisory lock; on SQLite, by BEGIN IMMEDIATE)."""

    def one_in_flight(count, free, now):
        return 1.0 if count.in_flight >= 1 else 0.0

    async def begin(database):
        waited, _ = await queries.begin_signin(
            database,
            counts={"pair:alice 192.0.2.1": 5},
            unless_known=("pair:alice 192.0.2.1", "acct:alice", 100),
            now=1000.0,
            window=900.0,
            remember=30 * 86400.0,
            wait=one_in_flight,
        )
        return waited

    for _ in range(3):
        await queries.end_signin(
            db, keys=["pair:alice 192.0.2.1", "acct:alice"], now=1000.0, failed=False
        )
        waits = await asyncio.gather(*(begin(d) for d in [db, other_process] * 10))

        assert sorted(waits) == [0.0] + [1.0] * 19
