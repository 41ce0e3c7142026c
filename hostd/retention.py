"""How long uploads are kept: the [retention] policy, the expiry an upload asks for, and the
policy in words for the /api page."""

from __future__ import annotations

import datetime
import email.utils
import re

from hostd.config import LONGEST_EXPIRY_HOURS, Config
from hostd.parsing import parse_count, parse_http_date

HOUR = 3600
EXPIRES_FIELD = "expires"
EXPIRES_HEADER = "Expires"
# The answer's X-Expires when the upload never expires (else an HTTP date).
NEVER = "never"

# RFC 3339's profile of ISO 8601, with seconds and fractions optional: ASCII digits only,
# a "T" (or a space) between date and time, and a zone ("Z" or an offset) that must be there.
ISO_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,][0-9]+)?)?"
    r"(?:([Zz])|([+-])([0-9]{2}):?([0-9]{2}))?"
)


class ExpiryError(ValueError):
    """An expiry that cannot be used; the message is for the uploader."""


# An RFC 5322 date with a numeric zone, as `date -R` writes it: Thu, 31 Jan 2030 13:00:00 +0100.
RFC5322_DATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-3][0-9] "
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-2][0-9]:[0-5][0-9]:[0-5][0-9] [+-][0-9]{4}"
)


# A whole number from here on is a time in Unix milliseconds, as 0x0.st takes it (its
# `expires` is hours, or "a timestamp in epoch milliseconds"): September 2001 onwards, and
# far beyond a million hours' worth of hours. A bigger one is refused as too far away.
EPOCH_MS_FROM = 1_000_000_000_000
LATEST_EPOCH_MS = 10**16


def parse_expires(text: str, *, now: int, source: str = "expires") -> int | None:
    """When an upload asks to expire, as epoch seconds: `text` is a whole number of hours
    from `now`, a Unix time in milliseconds (EPOCH_MS_FROM and over, 0x0.st's form), an
    ISO 8601 time with its zone, or an HTTP date (what an `Expires` header holds elsewhere:
    `date -R`'s). None when it is empty (nothing asked).

    Raises ExpiryError (naming `source`) for anything else, a time not after `now`, or one
    more than LONGEST_EXPIRY_HOURS away. Caps are not applied here (see expires_at).
    """
    text = text.strip(" \t")
    if not text:
        return None
    number = parse_count(text, at_most=LATEST_EPOCH_MS)
    if number is not None and number < EPOCH_MS_FROM:
        if not 1 <= number <= LONGEST_EXPIRY_HOURS:
            raise ExpiryError(
                f"{source} must be from 1 to {LONGEST_EXPIRY_HOURS} hours, or a time: "
                "Unix time in milliseconds, ISO 8601 or an HTTP date"
            )
        return now + number * HOUR
    at = number // 1000 if number is not None else parse_http_date(text)
    if at is None and RFC5322_DATE.fullmatch(text):  # `date -R`: an offset where GMT would be
        try:
            at = int(email.utils.parsedate_to_datetime(text).timestamp())
        except ValueError:  # 31 Feb, 25:00
            raise ExpiryError(f"{source} is not a real time: {text}") from None
    if at is None:
        at = _iso_time(text, source)
    if at <= now:
        raise ExpiryError(f"{source} is in the past ({text}); give a later time, or hours")
    if at > now + LONGEST_EXPIRY_HOURS * HOUR:
        raise ExpiryError(f"{source} is more than {LONGEST_EXPIRY_HOURS} hours away")
    return at


def _iso_time(text: str, source: str) -> int:
    match = ISO_TIME.fullmatch(text)
    if match is None:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise ExpiryError(
            f"{source} must be a whole number of hours, or an ISO 8601 time such as"
            f" 2030-01-31T12:00:00Z (or an HTTP date, or Unix time in milliseconds); got {shown!r}"
        )
    year, month, day, hour, minute, second, utc, sign, zone_hours, zone_minutes = match.groups()
    if utc is None and sign is None:
        raise ExpiryError(f"{source} needs a time zone: end it with Z (UTC) or an offset (+01:00)")
    try:
        zone: datetime.tzinfo = datetime.UTC
        if sign is not None:
            offset = datetime.timedelta(hours=int(zone_hours), minutes=int(zone_minutes))
            zone = datetime.timezone(offset if sign == "+" else -offset)
        moment = datetime.datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second or 0),
            tzinfo=zone,
        )
    except ValueError:  # the 31st of February, 24:00, an offset of 24 hours or more
        raise ExpiryError(f"{source} is not a real time: {text}") from None
    return int(moment.timestamp())


def cap_hours(config: Config, size_bytes: int) -> int | None:
    """The longest a file of this size may be kept: the shortest of max_hours and every
    hours_by_size step it reaches; None when nothing caps it."""
    caps = [hours for size, hours in config.hours_by_size if size_bytes >= size]
    if config.max_hours is not None:
        caps.append(config.max_hours)
    return min(caps, default=None)


def expires_at(
    config: Config, *, now: int, size_bytes: int, anonymous: bool, asked: int | None
) -> int | None:
    """When an upload expires (None: never): the time it asked for, else the default for
    its kind (anonymous or an account's), cut to the caps for its size."""
    if asked is not None:
        at: int | None = asked
    else:
        hours = config.anonymous_hours if anonymous else config.account_hours
        at = None if hours is None else now + hours * HOUR
    cap = cap_hours(config, size_bytes)
    if cap is not None:
        at = now + cap * HOUR if at is None else min(at, now + cap * HOUR)
    return at


def http_date(epoch: int | None) -> str:
    """X-Expires: an HTTP date (IMF-fixdate), or "never"."""
    return NEVER if epoch is None else email.utils.formatdate(epoch, usegmt=True)


def iso_time(epoch: int | None) -> str | None:
    """expires_at in JSON: ISO 8601 in UTC, or None (null) for never."""
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(hours: int) -> str:
    """ "1 hour", "36 hours", "30 days": days when it is a whole number of them."""
    if hours % 24 == 0:
        days = hours // 24
        return f"{days:,} day{'' if days == 1 else 's'}"
    return f"{hours:,} hour{'' if hours == 1 else 's'}"


def exact_size(size: int) -> str:
    """A threshold as the admin most likely wrote it: "100 MiB", else in bytes."""
    for unit, name in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if size and size % unit == 0:
            return f"{size // unit:,} {name}"
    return f"{size:,} bytes"


def describe(config: Config) -> list[str]:
    """The policy, in sentences a user can check against what happens."""
    longest = config.max_hours
    anonymous, account = (
        _shortest(hours, longest) for hours in (config.anonymous_hours, config.account_hours)
    )
    if anonymous is None and account is None:
        sentences = [
            "Files are kept until they are deleted, unless their upload asks for an expiry."
        ]
    elif anonymous == account:
        assert anonymous is not None
        sentences = [f"Files are kept for {duration(anonymous)} after their upload."]
    else:
        sentences = [
            f"Anonymous uploads are kept {_kept(anonymous)}, uploads to an account"
            f" {_kept(account)}."
        ]
    if longest is not None:
        sentences.append(
            f"An upload may ask for a time of its own, up to {duration(longest)}:"
            " no upload is kept longer."
        )
    elif anonymous is not None or account is not None:
        sentences.append("An upload may ask for a time of its own, shorter or longer.")
    if config.hours_by_size:
        steps = [
            f"of {exact_size(size)} or more at most {duration(hours)}"
            for size, hours in config.hours_by_size
        ]
        sentences.append(f"Bigger files are kept for less time: files {'; '.join(steps)}.")
    sentences.append(
        "A file stays as long as any upload of the same bytes does, and is not served from"
        " the moment the last one expires."
    )
    return sentences


# What the upload page offers besides the default, in hours.
KEEP_CHOICES = (1, 24, 7 * 24, 30 * 24, 365 * 24)


def keep_choices(config: Config, *, anonymous: bool) -> tuple[str, list[tuple[int, str]]]:
    """The upload page's choice of how long to keep a file: the default's words, then
    (hours, words) for the other times, shorter or longer, under max_hours (a longer one
    would be cut to it)."""
    default = _shortest(
        config.anonymous_hours if anonymous else config.account_hours, config.max_hours
    )
    words = "until deleted" if default is None else f"for {duration(default)}"
    longest = config.max_hours
    choices = [
        (hours, f"for {duration(hours)}")
        for hours in KEEP_CHOICES
        if hours != default and (longest is None or hours < longest)
    ]
    return words, choices


def _shortest(hours: int | None, cap: int | None) -> int | None:
    return min((h for h in (hours, cap) if h is not None), default=None)


def _kept(hours: int | None) -> str:
    return f"for {duration(hours)}" if hours is not None else "until they are deleted"
