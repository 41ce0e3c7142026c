"""The sign-in and registration throttles, on an injected clock."""

from __future__ import annotations

import pytest

from hostd.throttle import RegistrationLimiter, SignInLimiter, address_key


def wait(limiter, account, address):
    """The wait a sign-in would be given now (the attempt is ended at once: it counts nothing)."""
    with limiter.attempt(account, address) as attempt:
        return attempt.wait


def fail(limiter, clock, account, address, times=1):
    """`times` failed sign-ins, each sent as soon as the limiter lets it through."""
    for _ in range(times):
        clock.advance(wait(limiter, account, address))
        with limiter.attempt(account, address) as attempt:
            assert attempt.wait == 0
            attempt.failed()


def test_each_account_and_address_gets_five_free_failures_then_a_doubling_wait(clock):
    limiter = SignInLimiter(clock=clock)

    waits = []
    for _ in range(8):
        waits.append(wait(limiter, "ann", "192.0.2.1"))
        fail(limiter, clock, "ann", "192.0.2.1")

    assert waits == [0, 0, 0, 0, 0, 1.0, 2.0, 4.0]
    assert wait(limiter, "ann", "192.0.2.2") == 0  # another address: its own budget


def test_the_wait_stops_doubling_at_five_minutes(clock):
    limiter = SignInLimiter(clock=clock)

    fail(limiter, clock, "ann", "192.0.2.1", times=20)

    assert wait(limiter, "ann", "192.0.2.1") == 300.0


def test_an_address_gets_twenty_free_failures_over_all_accounts(clock):
    limiter = SignInLimiter(clock=clock)

    for i in range(20):
        fail(limiter, clock, f"user{i}", "192.0.2.1")

    assert wait(limiter, "someone-else", "192.0.2.1") == 1.0
    assert wait(limiter, "someone-else", "192.0.2.2") == 0


def test_an_account_is_held_after_a_hundred_failures_except_where_it_signed_in_before(clock):
    limiter = SignInLimiter(clock=clock)
    with limiter.attempt("ann", "192.0.2.1") as attempt:
        attempt.succeeded()

    for i in range(20):
        fail(limiter, clock, "ann", f"198.51.100.{i}", times=5)

    assert wait(limiter, "ann", "203.0.113.9") == 1.0
    assert wait(limiter, "ann", "192.0.2.1") == 0


def test_a_success_is_remembered_for_thirty_days(clock):
    limiter = SignInLimiter(per_account=10, clock=clock)
    with limiter.attempt("ann", "192.0.2.1") as attempt:
        attempt.succeeded()
    clock.advance(30 * 86400 + 1)

    fail(limiter, clock, "ann", "198.51.100.1", times=5)
    fail(limiter, clock, "ann", "198.51.100.2", times=6)

    assert wait(limiter, "ann", "192.0.2.1") == 2.0


def test_a_count_is_forgotten_fifteen_minutes_after_its_last_failure(clock):
    limiter = SignInLimiter(clock=clock)
    start = clock.now

    fail(limiter, clock, "ann", "192.0.2.1", times=17)  # at the pace of the waits
    held = wait(limiter, "ann", "192.0.2.1")
    clock.advance(900)
    still = wait(limiter, "ann", "192.0.2.1")
    clock.advance(1)

    assert clock.now - start > 2 * 900  # longer than the window: guessing did not reset it
    assert held == 300.0 and still == 0
    free_again = []
    for _ in range(6):
        free_again.append(wait(limiter, "ann", "192.0.2.1"))
        fail(limiter, clock, "ann", "192.0.2.1")
    assert free_again == [0, 0, 0, 0, 0, 1.0]


def test_a_success_clears_its_own_account_and_address_only(clock):
    limiter = SignInLimiter(per_address=6, clock=clock)
    fail(limiter, clock, "ann", "192.0.2.1", times=5)
    fail(limiter, clock, "bob", "192.0.2.1")

    clock.advance(wait(limiter, "ann", "192.0.2.1"))
    with limiter.attempt("ann", "192.0.2.1") as attempt:
        attempt.succeeded()
    fail(limiter, clock, "cid", "192.0.2.1")

    assert wait(limiter, "ann", "192.0.2.1") == 2.0  # the address's count went on: 7th failure


def test_attempts_in_flight_count_and_one_without_an_outcome_counts_nothing(clock):
    limiter = SignInLimiter(clock=clock)

    in_flight = [limiter.attempt("ann", "192.0.2.1") for _ in range(5)]
    sixth = wait(limiter, "ann", "192.0.2.1")
    for attempt in in_flight:
        with attempt:  # ends with neither failed() nor succeeded(): the server was busy
            pass

    assert sixth == 1.0
    assert wait(limiter, "ann", "192.0.2.1") == 0
    assert len(limiter) == 0


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


def test_limiter_memory_is_bounded(clock):
    limiter = SignInLimiter(max_entries=100, clock=clock)

    for i in range(10_000):
        fail(limiter, clock, f"user{i}", f"10.0.{i // 256}.{i % 256}")
        with limiter.attempt(f"user{i}", "192.0.2.1") as attempt:
            attempt.succeeded()

    assert len(limiter) <= 2 * 100  # counts, and remembered successes


def test_registrations_are_limited_per_address_per_hour(clock):
    registrations = RegistrationLimiter(2, clock=clock)

    waits = [registrations.take("192.0.2.1") for _ in range(3)]
    registrations.give_back("192.0.2.1")
    given_back = registrations.take("192.0.2.1")
    clock.advance(3600)

    assert waits == [0, 0, 3600.0]
    assert given_back == 0
    assert registrations.take("192.0.2.1") == 0
    assert registrations.take("2001:db8::1") == registrations.take("2001:db8::2") == 0
    assert registrations.take("2001:db8::3") > 0  # one /64
