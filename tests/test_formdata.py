"""The streaming form parser, fed the way Tornado feeds it: in arbitrary pieces."""

from __future__ import annotations

import hashlib
import random

import pytest
from helpers import multipart_body

from hostd.formdata import (
    FORM_OVERHEAD_BYTES,
    UploadError,
    UploadForm,
    boundary_of,
    clean_filename,
)
from hostd.local import LocalBlobStore


@pytest.fixture
def local(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    yield store
    store.close()


def form(local, limit=1000):
    return UploadForm("hostd-test-boundary", max_file_bytes=limit, open_writer=local.writer)


@pytest.mark.parametrize("piece", [1, 7, 64, 100_000])
@pytest.mark.gen_test
async def test_any_chunking_gives_the_same_file_and_fields(local, piece):
    data = b"\r\n--hostd-test-boundar" * 20  # near-misses of the boundary inside the file
    body, _ = multipart_body({"api": "1"}, [("file", "name.bin", data)])
    parsed = form(local)

    for i in range(0, len(body), piece):
        parsed.feed(body[i : i + piece])
    written = await parsed.finish()

    assert written.sha256 == hashlib.sha256(data).hexdigest()
    assert parsed.fields == {"api": "1"}
    assert parsed.filename == "name.bin"


DELIMITER = b"\r\n--hostd-test-boundary"
# Bytes that look, to a parser, like the start of a delimiter, or like one cut short.
NEAR_MISSES = [b"\r", b"\r\n", b"\r\n-", b"\r\n--", DELIMITER[:-1], DELIMITER[1:] + b"\r\n"]


def file_of_near_misses(rng: random.Random, count: int) -> bytes:
    """Random bytes strewn with near-misses of the delimiter, and never the delimiter."""
    data = b"".join(
        rng.choice(NEAR_MISSES) + rng.randbytes(rng.randrange(300)) for _ in range(count)
    )
    while DELIMITER in data:
        data = data.replace(DELIMITER, b"\r\n-~hostd-test-boundary")
    return data


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.gen_test
async def test_a_file_comes_out_whole_however_its_body_is_cut(local, seed):
    # Pieces with no delimiter in them pass the parser by (UploadForm._feed): cut anywhere,
    # in a near-miss, in the real delimiter or just after it, the file and fields stay.
    rng = random.Random(seed)
    data = file_of_near_misses(rng, 200)
    body, _ = multipart_body({"api": "1"}, [("file", "a.bin", data)], fields_after={"b": "2"})
    parsed = form(local, limit=len(data))

    at = 0
    while at < len(body):
        size = rng.choice([1, 2, 3, 22, 23, 24, 25, 26, 100, 4000, 20_000])
        parsed.feed(body[at : at + size])
        at += size
    written = await parsed.finish()

    assert written.size_bytes == len(data)
    assert written.sha256 == hashlib.sha256(data).hexdigest()
    assert parsed.fields == {"api": "1", "b": "2"}


@pytest.mark.parametrize("after", [{}, {"b": "2"}], ids=["last part", "a field after"])
@pytest.mark.gen_test
async def test_a_delimiter_cut_anywhere_still_ends_the_file(local, after):
    # The file's bytes have no CR, so that the pieces before the cut pass the parser by;
    # from the cut on, the body comes a byte at a time.
    data = random.Random(2).randbytes(20_000).replace(b"\r", b"")
    body, _ = multipart_body(files=[("file", "a.bin", data)], fields_after=after)
    end = body.index(data) + len(data)

    for cut in range(end - 3, end + len(DELIMITER) + 4):
        parsed = form(local, limit=len(data))
        for piece in (
            body[: end - 15_000],
            body[end - 15_000 : end - 5_000],
            body[end - 5_000 : cut],
        ):
            parsed.feed(piece)
        for at in range(cut, len(body)):
            parsed.feed(body[at : at + 1])
        written = await parsed.finish()

        assert written.sha256 == hashlib.sha256(data).hexdigest(), cut
        assert parsed.fields == after


@pytest.mark.gen_test
async def test_a_file_part_with_its_own_content_length_is_counted_by_the_parser(local):
    data = random.Random(3).randbytes(50_000).replace(b"\r", b"")
    head = (
        b'--hostd-test-boundary\r\nContent-Disposition: form-data; name="file"; '
        b'filename="a.bin"\r\nContent-Length: %d\r\n\r\n' % len(data)
    )
    body = head + data + b"\r\n--hostd-test-boundary--\r\n"
    parsed = form(local, limit=len(data))

    for at in range(0, len(body), 10_000):
        parsed.feed(body[at : at + 10_000])
    written = await parsed.finish()

    assert written.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.gen_test
async def test_a_body_that_stops_in_the_file_is_refused_however_it_was_cut(local):
    data = random.Random(4).randbytes(50_000).replace(b"\r", b"")
    body, _ = multipart_body(files=[("file", "a.bin", data)])
    truncated = body[: body.index(data) + len(data)]
    parsed = form(local, limit=len(data))

    for at in range(0, len(truncated), 10_000):
        parsed.feed(truncated[at : at + 10_000])
    with pytest.raises(UploadError) as caught:
        await parsed.finish()

    assert caught.value.status == 400
    assert caught.value.message.startswith("malformed multipart body")


@pytest.mark.gen_test
async def test_the_bulk_of_a_big_file_passes_the_parser_by(local):
    data = file_of_near_misses(random.Random(1), 3000)
    body, _ = multipart_body(files=[("file", "a.bin", data)])
    parsed = form(local, limit=len(data))
    parser, parsed_pieces = parsed._parser, []

    def counting_parse(chunk):
        parsed_pieces.append(chunk)
        return parser_parse(chunk)

    parser_parse, parser.parse = parser.parse, counting_parse
    pieces = [body[at : at + 10_000] for at in range(0, len(body), 10_000)]
    for piece in pieces:
        parsed.feed(piece)
    written = await parsed.finish()

    assert written.sha256 == hashlib.sha256(data).hexdigest()
    assert len(parsed_pieces) < len(pieces) / 2


def test_a_file_over_the_limit_is_a_413_as_soon_as_it_shows(local):
    body, _ = multipart_body(files=[("file", "big", b"x" * 2000)])
    parsed = form(local)

    with pytest.raises(UploadError) as caught:
        parsed.feed(body)

    assert caught.value.status == 413


def test_other_file_parts_count_against_the_limit_too(local):
    parsed = form(local)
    parsed.feed(
        b"--hostd-test-boundary\r\n"
        b'Content-Disposition: form-data; name="file"; filename="small"\r\n\r\nok\r\n'
        b"--hostd-test-boundary\r\n"
        b'Content-Disposition: form-data; name="junk"; filename="junk.bin"\r\n\r\n'
    )
    junk = b"x" * 8192

    with pytest.raises(UploadError) as caught:
        for _ in range((1000 + FORM_OVERHEAD_BYTES) // len(junk) + 1):
            parsed.feed(junk)

    assert caught.value.status == 413


def test_a_long_text_field_is_refused(local):
    body, _ = multipart_body({"note": "x" * 5000})

    with pytest.raises(UploadError, match="over 1024 bytes"):
        form(local).feed(body)


def test_a_field_sent_twice_is_refused_rather_than_one_of_them_picked(local):
    body, _ = multipart_body({"expires": "2"}, fields_after={"expires": "3"})

    with pytest.raises(UploadError, match="the form has the field 'expires' twice") as caught:
        form(local).feed(body)

    assert caught.value.status == 400


# What .NET's MultipartFormDataContent (PowerShell's -Form) sends for a name that is not
# ASCII: both parameters, `filename` MIME-encoded. (multipart_body puts the bytes between
# the quotes of filename="...": these close them and add the parameters after.)
BOTH_NAMES = b"=?utf-8?B?csOpc3Vtw6kudHh0?=\"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt; x=\""
ONLY_EXTENDED = b"\"; filename*=utf-8'en'%E2%82%AC%20rate.txt; x=\""


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(BOTH_NAMES, "résumé.txt"), (ONLY_EXTENDED, "€ rate.txt")],
    ids=["filename and filename*", "filename* alone"],
)
@pytest.mark.gen_test
async def test_an_extended_filename_parameter_is_the_files_name(local, raw, expected):
    body, _ = multipart_body(files=[("file", raw, b"named")])
    parsed = form(local)

    parsed.feed(body)
    await parsed.finish()

    assert parsed.filename == expected


@pytest.mark.parametrize(
    ("fields", "files", "why"),
    [
        ({}, [("image", "a.png", b"png")], "the file came in the field 'image'"),
        ({"url": "https://example.org/a.png"}, [], "hostd does not fetch files from URLs"),
        ({"api": "1"}, [], "no file: send the file in a multipart field named 'file'"),
    ],
    ids=["misnamed", "url", "none"],
)
@pytest.mark.gen_test
async def test_a_form_without_a_file_says_what_it_had_instead(local, fields, files, why):
    body, _ = multipart_body(fields, files)
    parsed = form(local)
    parsed.feed(body)

    with pytest.raises(UploadError, match=why) as caught:
        await parsed.finish()

    assert caught.value.status == 400
    assert "send the file in a multipart field named 'file'" in caught.value.message


def part(header_lines, content=b"x"):
    return (
        b"--hostd-test-boundary\r\n"
        + b"".join(line.encode() + b"\r\n" for line in header_lines)
        + b"\r\n"
        + content
        + b"\r\n"
    )


FIELD = 'Content-Disposition: form-data; name="note"'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b"".join(part([f'Content-Disposition: form-data; name="f{i}"']) for i in range(17)),
            "the form has more than 16 parts, its limit",
        ),
        (
            part([FIELD] + [f"X-Extra-{i}: x" for i in range(8)]),
            "a part of the form has more than 8 header lines, the limit of a part",
        ),
        (
            part([FIELD, "X-Long: " + "x" * 4096]),
            "a header line in the form is longer than 4096 bytes, the limit of a line",
        ),
    ],
    ids=["parts", "header lines", "header line length"],
)
def test_a_form_past_a_limit_is_refused_with_the_limit_and_its_number(local, body, message):
    with pytest.raises(UploadError) as caught:
        form(local).feed(body)

    assert (caught.value.status, caught.value.message) == (400, message)


def test_a_boundary_past_its_limit_is_refused_with_the_limit_and_its_number():
    within = boundary_of("multipart/form-data; boundary=" + "b" * 200)

    with pytest.raises(UploadError) as caught:
        boundary_of("multipart/form-data; boundary=" + "b" * 201)

    assert within == "b" * 200
    assert caught.value.message == (
        "the multipart/form-data boundary is longer than 200 characters, its limit"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, "file"),
        ("", "file"),
        ("   ", "file"),
        ("-", "file"),  # curl's name for standard input (-F file=@-)
        ("photo.png", "photo.png"),
        ("Ã©tÃ©.txt", "été.txt"),  # UTF-8 bytes as the parser hands them over (latin-1)
        ("e\u0301.txt", "é.txt"),  # NFC
    ],
)
def test_clean_filename_keeps_good_names(raw, expected):
    assert clean_filename(raw) == expected


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "application/json",
        "multipart/form-data; boundary=" + "x" * 201,
        'multipart/form-data; boundary=""',
        "multipart/form-data; charset=utf-8",
        "multipart/mixed; boundary=abc",
    ],
)
def test_boundary_of_refuses_what_is_not_a_form(content_type):
    with pytest.raises(UploadError) as caught:
        boundary_of(content_type)

    assert caught.value.status == 400


def test_boundary_of_reads_quoted_boundaries():
    assert boundary_of('multipart/form-data; boundary="a b:c"') == "a b:c"


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ("multipart/form-data; boundary=abc", "abc"),
        ("Multipart/Form-Data;BOUNDARY=abc", "abc"),  # names are case-insensitive
        ("multipart/form-data; charset=utf-8; boundary=----x7", "----x7"),
        ("multipart/form-data; boundary = abc ; charset=utf-8", "abc"),
        (r'multipart/form-data; boundary="a\"b"', 'a"b'),  # a quoted pair
        ('multipart/form-data; boundary="semi;colon"', "semi;colon"),
    ],
)
def test_boundary_of_reads_the_parameter_wherever_it_is(content_type, boundary):
    assert boundary_of(content_type) == boundary
