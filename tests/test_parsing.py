"""Numbers and dates from requests: read exactly as the grammar says, or not at all."""

from __future__ import annotations

import calendar

import pytest

from hostd.parsing import parse_count, parse_http_date

SUNDAY_1994 = calendar.timegm((1994, 11, 6, 8, 49, 37))
IN_2026 = calendar.timegm((2026, 6, 1, 0, 0, 0))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("7", 7), ("007", 7), ("100", 100), ("101", 101), ("0" * 5000 + "5", 5)],
)
def test_parse_count_reads_ascii_digits(text, expected):
    assert parse_count(text, at_most=100) == expected


@pytest.mark.parametrize("text", ["1000", "99999999999999999999", "9" * 5000])
def test_parse_count_reads_anything_over_the_bound_as_one_more(text):
    assert parse_count(text, at_most=100) == 101


@pytest.mark.parametrize(
    "text", ["", " 5", "5 ", "+5", "-5", "5.0", "1_000", "²", "٣", "５", "0x10", "5\n"]
)
def test_parse_count_refuses_what_is_not_ascii_digits(text):
    assert parse_count(text, at_most=100) is None


@pytest.mark.parametrize(
    "text",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # RFC 850
        "Sun Nov  6 08:49:37 1994",  # asctime
        "Sun Nov 06 08:49:37 1994",  # asctime, 2DIGIT day
    ],
)
def test_the_three_http_date_forms(text):
    assert parse_http_date(text, now=IN_2026) == SUNDAY_1994


def test_a_four_digit_year_is_what_it_says():
    assert parse_http_date("Thu, 01 Oct 0052 00:00:00 GMT") == calendar.timegm((52, 10, 1, 0, 0, 0))


@pytest.mark.parametrize(
    ("two_digits", "year"), [("26", 2026), ("52", 2052), ("76", 2076), ("77", 1977), ("94", 1994)]
)
def test_an_rfc850_year_is_never_more_than_50_years_ahead(two_digits, year):
    parsed = parse_http_date(f"Thursday, 01-Oct-{two_digits} 00:00:00 GMT", now=IN_2026)

    assert parsed == calendar.timegm((year, 10, 1, 0, 0, 0))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "01 Oct 0052 00:00:00 GMT",  # no day name
        "Sun, 06 Nov 94 08:49:37 GMT",  # IMF-fixdate with two digits
        "Sun, 6 Nov 1994 08:49:37 GMT",  # one-digit day
        "Sun, 06 Nov 1994 08:49:37 +0000",  # not GMT
        "Sun, 06 Nov 1994 08:49:37",
        "Sun, 06 Nov 1994 08:49 GMT",
        "sun, 06 nov 1994 08:49:37 gmt",  # case-sensitive
        "Sun,  06 Nov 1994 08:49:37 GMT",
        "Sunday, 06 Nov 1994 08:49:37 GMT",  # long day name in IMF-fixdate
        "Sun, 06-Nov-94 08:49:37 GMT",  # short day name in RFC 850
        "Sun, 31 Feb 1994 08:49:37 GMT",  # no such day
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 0000 08:49:37 GMT",  # no year 0
        "Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT",  # two members
        "Sun, ０6 Nov 1994 08:49:37 GMT",  # fullwidth digit
        "1994-11-06T08:49:37Z",
    ],
)
def test_anything_else_is_not_an_http_date(text):
    assert parse_http_date(text, now=IN_2026) is None
