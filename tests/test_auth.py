"""Argon2 parameters, key format and verification, and the lanes Argon2 runs in."""

from __future__ import annotations

import asyncio

import argon2
import pytest
from conftest import GatedHasher
from helpers import until_heard

from hostd import db as queries
from hostd.auth import PASSWORD_PROFILE, AccountDisabled, Auth, Busy, parse_key


class CountingHasher(argon2.PasswordHasher):
    """The real Argon2, counting verifications."""

    verifications = 0
    hashes = 0

    def verify(self, hash, password):
        type(self).verifications += 1
        return super().verify(hash, password)

    def hash(self, password, *, salt=None):
        type(self).hashes += 1
        return super().hash(password, salt=salt)


@pytest.fixture
def counting():
    CountingHasher.verifications = CountingHasher.hashes = 0
    hasher = CountingHasher.from_parameters(argon2.profiles.CHEAPEST)
    auth = Auth(password_hasher=hasher, key_hasher=hasher)
    yield auth
    auth.close()


async def new_key(db, auth, user_id):
    minted = await auth.mint_key()
    await queries.insert_api_key(
        db, user_id=user_id, key_id=minted.key_id, secret_hash=minted.secret_hash, label=""
    )
    return minted


def test_production_password_parameters_meet_owasp_and_verify():
    hasher = argon2.PasswordHasher.from_parameters(PASSWORD_PROFILE)

    stored = hasher.hash("correct horse battery staple")

    params = argon2.extract_parameters(stored)
    assert params.type is argon2.Type.ID
    assert params.memory_cost >= 19 * 1024 and params.time_cost >= 2
    assert hasher.verify(stored, "correct horse battery staple")


@pytest.mark.gen_test
async def test_an_old_password_hash_is_replaced_on_sign_in(db, auth):
    old = argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST).hash("pw")
    stronger = Auth(password_hasher=argon2.PasswordHasher(time_cost=2, memory_cost=8 * 1024))
    user = await queries.insert_user(db, name="old", password_hash=old)
    try:
        ok, new_hash = await stronger.check_password(user, "pw")
    finally:
        stronger.close()

    assert ok is True
    assert new_hash is not None and argon2.extract_parameters(new_hash).time_cost == 2


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (
            "hk_0123456789abcdef_secret_with_underscores",
            ("0123456789abcdef", "secret_with_underscores"),
        ),
        ("hk_0123456789ABCDEF_secret", None),
        ("hk_0123456789abcde_secret", None),
        ("hk_0123456789abcdef_", None),
        ("xx_0123456789abcdef_secret", None),
        ("hk_0123456789abcdef_" + "a" * 101, None),
    ],
)
def test_parse_key(token, expected):
    assert parse_key(token) == expected


@pytest.mark.gen_test
async def test_every_rejection_costs_one_argon2_verification(db, counting, login):
    alice = await login()
    real = await new_key(db, counting, alice.user.id)
    wrong_secret = real.token[:-3] + "zzz"
    unknown_id = "hk_ffffffffffffffff_" + real.token.split("_", 2)[2]

    for token in [wrong_secret, unknown_id, "garbage"]:
        before = CountingHasher.verifications
        assert await counting.verify_key(db, token) is None
        assert CountingHasher.verifications == before + 1, token


def test_starting_costs_no_argon2_work(counting):
    # A password hash takes 64 MiB for a moment: not something to do before it is needed.
    assert CountingHasher.hashes == 0


@pytest.mark.gen_test
async def test_an_unknown_user_costs_one_verification_like_a_wrong_password(db, counting):
    bob = await queries.insert_user(db, name="bob", password_hash=counting.passwords.hash("pw"))
    verifications = []

    for user, password in [(None, "pw"), (bob, "wrong"), (None, "pw")]:
        before = CountingHasher.verifications
        ok, _ = await counting.check_password(user, password)
        verifications.append(CountingHasher.verifications - before)
        assert ok is False

    assert verifications == [1, 1, 1]


@pytest.mark.gen_test
async def test_a_burst_with_a_new_key_costs_one_verification(db, counting, login):
    alice = await login()
    minted = await new_key(db, counting, alice.user.id)
    wrong = minted.token[:-3] + "zzz"

    good = await asyncio.gather(*(counting.verify_key(db, minted.token) for _ in range(10)))
    after_good = CountingHasher.verifications
    bad = await asyncio.gather(*(counting.verify_key(db, wrong) for _ in range(10)))

    assert all(key is not None and key.key_id == minted.key_id for key in good)
    assert after_good == 1
    assert bad == [None] * 10  # sharing a check never shares a success with a wrong key


@pytest.mark.gen_test
async def test_a_verified_key_skips_argon2_until_it_is_invalidated(db, counting, login):
    alice = await login()
    minted = await new_key(db, counting, alice.user.id)

    first = await counting.verify_key(db, minted.token)
    after_first = CountingHasher.verifications
    second = await counting.verify_key(db, minted.token)
    after_second = CountingHasher.verifications
    await queries.invalidate_api_key(db, key_id=minted.key_id)
    third = await counting.verify_key(db, minted.token)

    assert first is not None and second is not None
    assert after_second == after_first  # the second came from the cache...
    assert third is None  # ...and the cache did not outlive the invalidation


@pytest.mark.gen_test
async def test_a_key_invalidated_by_another_process_is_refused_at_once(
    db, counting, login, other_process
):
    alice = await login()
    minted = await new_key(db, counting, alice.user.id)
    assert await counting.verify_key(db, minted.token)  # remembered

    before = db.changes.notices
    await queries.invalidate_api_key(other_process, key_id=minted.key_id)
    await until_heard(db, before)  # PostgreSQL: a few ms after the commit (README: Storage)

    assert await counting.verify_key(db, minted.token) is None


@pytest.mark.gen_test
async def test_an_account_disabled_by_another_process_opens_nothing_at_once(
    db, counting, login, other_process
):
    alice = await login()
    minted = await new_key(db, counting, alice.user.id)
    assert await counting.verify_key(db, minted.token)  # remembered

    before = db.changes.notices
    await queries.set_user_disabled(other_process, user_id=alice.user.id, disabled=True)
    await until_heard(db, before)

    with pytest.raises(AccountDisabled):
        await counting.verify_key(db, minted.token)


@pytest.mark.gen_test
async def test_the_verification_cache_is_bounded(db, login):
    cheap = argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST)
    auth = Auth(password_hasher=cheap, key_hasher=cheap, cache_size=3)
    alice = await login()
    try:
        for _ in range(5):
            assert await auth.verify_key(db, (await new_key(db, auth, alice.user.id)).token)
        assert len(auth._verified) == 3
    finally:
        auth.close()


@pytest.mark.gen_test
async def test_password_checks_past_the_queue_get_busy_not_an_endless_wait(db):
    slow = argon2.PasswordHasher(time_cost=2, memory_cost=16 * 1024, parallelism=1)
    auth = Auth(password_hasher=slow, max_waiting_passwords=2)
    try:
        results = await asyncio.gather(
            *(auth.check_password(None, "guess") for _ in range(5)), return_exceptions=True
        )
    finally:
        auth.close()

    assert [type(r).__name__ for r in results] == ["tuple", "tuple", "Busy", "Busy", "Busy"]


@pytest.mark.gen_test
async def test_a_flood_of_password_checks_does_not_hold_up_api_keys(db, login):
    slow = argon2.PasswordHasher(time_cost=2, memory_cost=16 * 1024, parallelism=1)
    cheap = argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST)
    auth = Auth(password_hasher=slow, key_hasher=cheap)
    alice = await login()
    minted = await new_key(db, auth, alice.user.id)
    finished: list[str] = []

    async def password() -> None:
        await auth.check_password(None, "guess")
        finished.append("password")

    async def key() -> None:
        assert await auth.verify_key(db, minted.token) is not None
        finished.append("key")

    try:
        await asyncio.gather(*(password() for _ in range(6)), key())
    finally:
        auth.close()

    assert finished.index("key") < 2  # not behind the queue of six password checks


@pytest.mark.gen_test
async def test_new_accounts_wait_behind_sign_ins_and_hold_half_the_queue():
    hasher = GatedHasher()
    auth = Auth(password_hasher=hasher, max_waiting_passwords=4)
    await auth.check_password(None, "makes the dummy hash")
    hasher.gate.clear()

    def sign_in(password):
        return asyncio.ensure_future(auth.check_password(None, password))

    def new_account(password):
        return asyncio.ensure_future(auth.hash_password(password, new_account=True))

    try:
        jobs = [new_account("new 0"), new_account("new 1"), new_account("new 2")]
        jobs += [sign_in("sign-in A"), sign_in("sign-in B"), sign_in("sign-in C")]
        await asyncio.sleep(0)  # each has taken its place in the lane, or been refused
        hasher.gate.set()
        results = await asyncio.gather(*jobs, return_exceptions=True)
    finally:
        hasher.gate.set()
        auth.close()

    refused = [i for i, result in enumerate(results) if isinstance(result, Busy)]
    assert refused == [2, 5]  # new accounts hold two of the four places; sign-ins the rest
    assert hasher.jobs[-4:] == ["hash new 0", "verify sign-in A", "verify sign-in B", "hash new 1"]


def test_a_remembered_key_has_its_use_written_at_most_once_a_minute(counting):
    # The key's row, as remembered from its verification, says it was never used.
    key = queries.ApiKey(1, "0" * 16, 1, "hash", "", 0, last_used_at=None, invalidated_at=None)

    writes = [counting.note_use(key, at, 60) for at in (1000, 1030, 1059, 1060, 1061)]

    assert writes == [True, False, False, True, False]
