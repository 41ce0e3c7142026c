"""Strict parsing of the numbers and dates that requests carry: exactly as the grammar
says, or not at all."""

from __future__ import annotations

import calendar
import datetime
import re
import time

ASCII_DIGITS = re.compile(r"[0-9]+")

DAY_NAMES = "Mon|Tue|Wed|Thu|Fri|Sat|Sun"
LONG_DAY_NAMES = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "|".join(MONTHS)
_TIME = "([0-9]{2}):([0-9]{2}):([0-9]{2})"
# RFC 9110 5.6.7: the three forms, case-sensitive, single spaces as written.
IMF_FIXDATE = re.compile(rf"(?:{DAY_NAMES}), ([0-9]{{2}}) ({_MONTH}) ([0-9]{{4}}) {_TIME} GMT")
RFC850_DATE = re.compile(rf"(?:{LONG_DAY_NAMES}), ([0-9]{{2}})-({_MONTH})-([0-9]{{2}}) {_TIME} GMT")
ASCTIME_DATE = re.compile(rf"(?:{DAY_NAMES}) ({_MONTH}) ([0-9]{{2}}| [0-9]) {_TIME} ([0-9]{{4}})")


def parse_count(text: str, *, at_most: int) -> int | None:
    """`text` as a whole number written in ASCII digits, or None when it is anything else.

    str.isdigit() and int() also take "²" or "٣", and int() raises past 4,300 digits. A
    number over `at_most` comes back as `at_most + 1`, "too big", so callers refuse it with
    one comparison, and nothing bigger reaches int() or SQLite (whose integers stop at
    2**63 - 1).
    """
    if ASCII_DIGITS.fullmatch(text) is None:
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(at_most)):
        return at_most + 1
    return min(int(digits), at_most + 1)


def parse_http_date(text: str, *, now: float | None = None) -> int | None:
    """An HTTP-date as Unix seconds, or None when `text` is not one (RFC 9110 5.6.7).

    IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") and the two obsolete forms, RFC 850
    ("Sunday, 06-Nov-94 08:49:37 GMT") and asctime ("Sun Nov  6 08:49:37 1994"). A
    four-digit year is what it says ("0052" is the year 52, not 2052); RFC 850's two-digit
    year is the latest one not more than 50 years after `now`, as the RFC says. The day
    name is not checked against the date.
    """
    if match := IMF_FIXDATE.fullmatch(text):
        day, month, year, hour, minute, second = match.groups()
    elif match := RFC850_DATE.fullmatch(text):
        day, month, two_digits, hour, minute, second = match.groups()
        year = str(widen_year(int(two_digits), time.time() if now is None else now))
    elif match := ASCTIME_DATE.fullmatch(text):
        month, day, hour, minute, second, year = match.groups()
    else:
        return None
    try:
        moment = datetime.datetime(
            int(year), MONTHS.index(month) + 1, int(day), int(hour), int(minute), int(second)
        )
    except ValueError:  # 31 Feb, 24:00:00, the year 0
        return None
    return calendar.timegm(moment.timetuple())


def widen_year(two_digits: int, now: float) -> int:
    this_year = time.gmtime(now).tm_year
    year = this_year - this_year % 100 + two_digits
    return year - 100 if year > this_year + 50 else year
