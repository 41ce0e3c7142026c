"""Numbers and dates from requests: read exactly as the grammar says, or not at all."""

from __future__ import annotations

import calendar
import random

import pytest
from tornado.httputil import HTTPHeaders, HTTPInputError

from hostd.parsing import parse_count, parse_http_date
from hostd.server import FIELD_LINES, parse_field_lines

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


def parsed(parse, text):
    """Every (name, value) in order, or Tornado's error."""
    try:
        return list(parse(text).get_all())
    except HTTPInputError as exc:
        return ("HTTPInputError", str(exc))


def test_field_lines_from_a_proxy_and_a_browser():
    text = (
        "\r\nHost: files.example.org\r\nX-Forwarded-For: 203.0.113.7\r\n"
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64)  \r\naccept:*/*\n"
        "Cookie: a=b\r\ncookie: c=d\r\nX-Empty:\r\nX-Latin-1: caf\xe9\r\n\r\n"
    )

    headers = parse_field_lines(text[1:])

    assert list(headers.get_all()) == [
        ("Host", "files.example.org"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("Accept", "*/*"),
        ("Cookie", "a=b"),
        ("Cookie", "c=d"),
        ("X-Empty", ""),
        ("X-Latin-1", "caf\xe9"),
    ]
    assert headers["Cookie"] == "a=b,c=d"


PIECES = ["Host", "X-A", "x-a", "a b", ":", ": ", " ", "\t", "\r", "\n", "\r\n", "v", "(", '"q"']
PIECES += [",", ";", "=", "\xe9", "\x80", "\xff", "\x00", "\x01", "\x7f", "\u0100"]


def random_field_lines(rnd):
    """Field lines as they come after a request line: mostly well formed, some not."""
    lines = []
    for _ in range(rnd.randint(0, 6)):
        if rnd.random() < 0.7:
            name = rnd.choice(["Host", "X-A", "x-a", "Content-Length"])
            line = name + rnd.choice([":", ": ", ":\t", " :"])
        else:
            line = ""
        line += "".join(rnd.choice(PIECES) for _ in range(rnd.randint(0, 5)))
        lines.append(line + rnd.choice(["\r\n", "\r\n", "\n"]))
    return "\n" + "".join(lines) + rnd.choice(["\r\n", "\n", "", "\r\n\r\n"])


def test_field_lines_are_parsed_as_tornado_parses_them():
    """The same headers in the same order, or the same error, for any text; the fast path
    is taken for a good share of it (valid heads), the rest goes to Tornado's parser."""
    rnd = random.Random(20261204)
    texts = [random_field_lines(rnd) for _ in range(20_000)]

    differ = [t for t in texts if parsed(parse_field_lines, t) != parsed(HTTPHeaders.parse, t)]

    assert differ == []
    assert sum(1 for t in texts if FIELD_LINES.fullmatch(t)) > 1000
