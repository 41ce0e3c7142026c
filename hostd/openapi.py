"""The OpenAPI 3.1 description of hostd's HTTP interface, served at /api/openapi.json.

One place for it: tests/test_openapi.py checks it against the routes the application
registers (every route described, every described path routed, the same methods) and runs
schemathesis against a live server with it, so that neither side can drift from the other.
A new route goes in one of the `*_PATHS` tables below, in the same commit.
"""

from __future__ import annotations

import copy
import functools
import json
import sys
import unicodedata
from typing import Any

from hostd import __version__
from hostd.auth import DELETE_TOKEN_PATTERN
from hostd.config import LONGEST_EXPIRY_HOURS
from hostd.formdata import MAX_FILENAME_BYTES, MAX_PARTS, MAX_TEXT_FIELD_BYTES, NOT_IN_FILENAMES
from hostd.hashes import PUBLIC_HASH_MAX, PUBLIC_HASH_MIN
from hostd.parsing import ASCTIME_DATE, IMF_FIXDATE, RFC850_DATE
from hostd.retention import RFC5322_DATE

Json = dict[str, Any]

HASH_PATTERN = f"^[A-Za-z0-9_-]{{{PUBLIC_HASH_MIN},{PUBLIC_HASH_MAX}}}$"
HTML = "text/html; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
JSON = "application/json; charset=utf-8"


def ref(kind: str, name: str) -> Json:
    return {"$ref": f"#/components/{kind}/{name}"}


def html(description: str) -> Json:
    """An HTML page answer (a page, a form again with what went wrong, or an error page)."""
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def api_error(description: str, **headers: Json) -> Json:
    answer: Json = {
        "description": description,
        "content": {"application/json": {"schema": ref("schemas", "ApiError")}},
    }
    if headers:
        answer["headers"] = headers
    return answer


def redirect(description: str) -> Json:
    return {"description": description, "headers": {"Location": ref("headers", "Location")}}


def form_request(properties: Json) -> Json:
    """A form's body (urlencoded), with the page's xsrf token beside its fields."""
    fields = {**properties, "_xsrf": {"type": "string"}}
    return {
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "properties": fields}
            }
        }
    }


def path_parameter(name: str, schema: Json, example: str, description: str) -> Json:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
        "example": example,
    }


HASH_PARAMETER = path_parameter(
    "hash",
    ref("schemas", "Hash"),
    "Xk3q9ZbT2mLw",
    "The file's public hash, as an upload answer gives it.",
)


# -- uploads -------------------------------------------------------------------------------

UPLOAD_ERRORS: dict[str, str] = {
    "400": "A malformed request: not multipart/form-data, no `file` field or an empty file, "
    "a bad filename, a form past its limits (16 parts, 1 KiB text fields, 8 header lines "
    "of 4 KiB a part, a boundary of at most 200 characters), a Content-Length that is not a "
    "number, or a bad expiry.",
    "401": "No account where the server needs one (`limits.allow_anonymous = false`), an "
    "Authorization header that is not a usable Bearer key, a key sent as `X-Api-Key` or "
    "`Api-Key` instead, or a key invalidated (or its account disabled or removed) while the "
    "body arrived.",
    "408": "The body stalled or crawled (`limits.body_idle_seconds`).",
    "413": "The file is over the size limit, the account's quota or the anonymous limit.",
    "429": "Too many uploads in flight from this address, over an upload rate limit, or "
    "too many invalid API keys from this address (`limits.invalid_keys_per_hour`); "
    "`Retry-After` says when to try again.",
    "451": "These bytes are banned from this server.",
    "503": "The database or the file storage cannot be reached or is busy, the storage "
    "cannot be written (a filesystem remounted read-only, wrong permissions: as `/healthz` "
    "says), the server is busy checking other keys, or it is shutting down; try again soon.",
    "507": "The server is out of storage space; the file was not stored.",
}
# What the /api page lists: the upload's own refusals and the one every URL may answer,
# which the server gives before it knows the URL (see HEAD_TOO_BIG).
UPLOAD_REFUSALS: dict[str, str] = dict(
    sorted(
        {
            **UPLOAD_ERRORS,
            "431": "The request's header fields are over 64 KiB; answered before the URL is "
            "read, so in plain text (`ERROR <message>`) here too.",
        }.items()
    )
)

# Every form retention.parse_expires takes, as its syntax: hours (1 to
# LONGEST_EXPIRY_HOURS), Unix milliseconds (13 to 16 digits: EPOCH_MS_FROM and over), an ISO
# 8601 time with its zone, an HTTP date in any of its three forms, or `date -R`'s; or empty.
# That a time lies ahead, at most LONGEST_EXPIRY_HOURS away, and is a real one (no 31
# February) no pattern can say: the description says it.
EXPIRES_PATTERN = (
    "^("
    + "|".join(
        [
            "0*([1-9][0-9]{0,5}|1000000)",
            "0*[1-9][0-9]{12,15}",
            "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?"
            "([Zz]|[+-][0-9]{2}:?[0-9]{2})",
            IMF_FIXDATE.pattern,
            RFC850_DATE.pattern,
            ASCTIME_DATE.pattern,
            RFC5322_DATE.pattern,
        ]
    )
    + ")?$"
)
EXPIRES_SCHEMA: Json = {
    "type": "string",
    "pattern": EXPIRES_PATTERN,
    "description": "When the upload should expire: a whole number of hours from now (1 to "
    f"{LONGEST_EXPIRY_HOURS:,}), or a time at most that far ahead: an ISO 8601 time with "
    "its zone (`2030-01-31T12:00:00Z`), an HTTP date (`Thu, 31 Jan 2030 12:00:00 GMT`) or "
    "Unix time in milliseconds (`1896091200000`, 0x0.st's form: 13 digits or more); empty for "
    "nothing asked. A time must be a real one and lie ahead (a past one is a 400). Send it "
    "once, with a value: as an `expires` field, an `Expires` header or `?expires=` in the "
    "URL, not two of them.",
}

# Answered by the server before it knows the URL, so in the plain-text protocol everywhere.
HEAD_TOO_BIG: Json = {
    "description": "The request's header fields are over 64 KiB.",
    "content": {"text/plain": {"schema": {"type": "string", "pattern": "^ERROR "}}},
}


def with_head_too_big(paths: Json) -> Json:
    """Every operation answers 431 (HEAD_TOO_BIG), the server's answer to any URL: added
    where an operation does not list it, without a body for a HEAD."""
    for path_item in paths.values():
        for method, operation in path_item.items():
            answer = HEAD_TOO_BIG
            if method == "head":
                answer = {"description": HEAD_TOO_BIG["description"]}
            operation["responses"].setdefault("431", answer)
    return paths


EXPIRES_PARAMETERS: list[Json] = [
    {
        "name": "Expires",
        "in": "header",
        "required": False,
        "schema": EXPIRES_SCHEMA,
        "example": "24",
    },
    {
        "name": "expires",
        "in": "query",
        "required": False,
        "description": "As the Expires header, for clients that can only add to the URL "
        "(ShareX's Parameters). One of the header, this and the form's field.",
        "schema": EXPIRES_SCHEMA,
    },
]

# A text field holds at most MAX_TEXT_FIELD_BYTES of UTF-8: in characters, a quarter of that
# is always within it (a schema counts characters, not bytes).
TEXT_FIELD: Json = {
    "type": "string",
    "maxLength": MAX_TEXT_FIELD_BYTES // 4,
    "description": f"At most {MAX_TEXT_FIELD_BYTES:,} bytes of UTF-8.",
}

UPLOAD_FORM: Json = {
    "type": "object",
    "required": ["file"],
    "description": f"At most {MAX_PARTS} parts; fields other than these are ignored.",
    "maxProperties": MAX_PARTS,
    "propertyNames": {"pattern": "^[A-Za-z0-9_.-]{1,100}$"},
    "additionalProperties": TEXT_FIELD,
    "properties": {
        "file": {
            "type": "string",
            "minLength": 1,
            "contentMediaType": "application/octet-stream",
            "description": "The file, with its filename (at most "
            f"{MAX_FILENAME_BYTES} bytes of UTF-8, no path parts) in the part's header.",
        },
        "expires": EXPIRES_SCHEMA,
    },
}

UPLOAD_ANSWER_HEADERS: Json = {
    "X-Delete-Url": ref("headers", "X-Delete-Url"),
    "X-Expires": ref("headers", "X-Expires"),
}

# The multipart form of POST /api/upload and of POST / (0x0.st's way).
FORM_UPLOAD: Json = {
    "required": True,
    "content": {"multipart/form-data": {"schema": UPLOAD_FORM}},
}

UPLOAD_PATHS: Json = {
    "/api/upload": {
        "post": {
            "tags": ["uploads"],
            "operationId": "upload",
            "summary": "Upload a file; JSON answer",
            "description": "The upload streams to disk as it arrives. With a Bearer key the "
            "upload is registered to the key's account; without one it is anonymous (where "
            "the server allows that). Browser cookies are ignored here.",
            "security": [{}, {"apiKey": []}],
            "parameters": [*EXPIRES_PARAMETERS],
            "requestBody": FORM_UPLOAD,
            "responses": {
                "200": {
                    "description": "Stored (or the same bytes were there already).",
                    "headers": UPLOAD_ANSWER_HEADERS,
                    "content": {"application/json": {"schema": ref("schemas", "Upload")}},
                    "links": {
                        name: {
                            "operationId": operation,
                            "parameters": {"hash": "$response.body#/hash"},
                            "description": description,
                        }
                        for name, operation, description in (
                            ("file", "downloadHash", "The file at its hash."),
                            ("thumbnail", "thumbnail", "An image's thumbnail."),
                            ("delete", "deleteFile", "Delete the account's uploads of it."),
                        )
                    },
                },
                **{
                    code: api_error(
                        text,
                        **(
                            {"WWW-Authenticate": ref("headers", "WWW-Authenticate")}
                            if code == "401"
                            else {}
                        ),
                    )
                    for code, text in UPLOAD_ERRORS.items()
                },
                "431": HEAD_TOO_BIG,
            },
        }
    },
    "/upload": {
        "post": {
            "tags": ["uploads"],
            "operationId": "uploadForm",
            "summary": "Upload a file; HTML page, or `OK <hash>` / `ERROR <message>` with api=1",
            "description": "The browser's upload URL. From a signed-in browser the upload is "
            "registered to its account and must carry the session's xsrf token (an "
            "`X-XSRFToken` header or an `_xsrf` field); without a session (curl) it is "
            "anonymous. With `api=1` (query or field) the answer is plain text: "
            "`OK <hash>` or `ERROR <message>`.",
            "security": [{}, {"session": []}],
            "parameters": [
                {
                    "name": "api",
                    "in": "query",
                    "required": False,
                    "description": "`1`: answer in plain text (any other value: HTML).",
                    "schema": {"type": "string"},
                },
                *EXPIRES_PARAMETERS,
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            **UPLOAD_FORM,
                            "properties": {
                                **UPLOAD_FORM["properties"],
                                "api": TEXT_FIELD,
                                "_xsrf": TEXT_FIELD,
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "Stored: `OK <hash>` with api=1, else the result page.",
                    "headers": UPLOAD_ANSWER_HEADERS,
                    "content": {
                        "text/plain": {"schema": {"type": "string", "pattern": "^OK "}},
                        "text/html": {"schema": {"type": "string"}},
                    },
                },
                **{
                    code: {
                        "description": text,
                        "content": {
                            "text/plain": {"schema": {"type": "string", "pattern": "^ERROR "}},
                            "text/html": {"schema": {"type": "string"}},
                        },
                    }
                    for code, text in {
                        **UPLOAD_ERRORS,
                        "403": "A signed-in browser's upload without its xsrf token.",
                    }.items()
                },
                "431": HEAD_TOO_BIG,
            },
        }
    },
}

# The document's OPTIONS of every path go without saying (see document()'s description);
# these two are asked by clients before they upload, so they are listed.
UPLOAD_OPTIONS: Json = {
    "tags": ["uploads"],
    "operationId": "uploadOptions",
    "summary": "The methods /api/upload takes (POST, PUT), in Allow",
    "security": [{}],
    "responses": {
        "204": {
            "description": "No body; the methods in `Allow`.",
            "headers": {"Allow": {"schema": {"type": "string"}}},
        }
    },
}


# -- files ----------------------------------------------------------------------------------

DOWNLOAD_HEADERS: Json = {
    "ETag": {
        "description": "The file's full SHA-256 in hex, quoted.",
        "schema": {"type": "string"},
    },
    "Last-Modified": {
        "description": "When the file was first stored.",
        "schema": {"type": "string"},
    },
    "Cache-Control": {
        "description": "Forever, or until the file expires.",
        "schema": {"type": "string"},
    },
    "Accept-Ranges": {"schema": {"type": "string", "enum": ["bytes"]}},
}

DOWNLOAD_PARAMETERS: list[Json] = [
    {
        "name": "Range",
        "in": "header",
        "required": False,
        "description": "One `bytes=` range; anything else gets the whole file.",
        "schema": {"type": "string"},
        "example": "bytes=0-99",
    },
    {
        "name": "If-Range",
        "in": "header",
        "required": False,
        "description": "The ETag: the range is served only while it still matches.",
        "schema": {"type": "string"},
    },
    {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
    },
    {
        "name": "If-Modified-Since",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
    },
    {
        "name": "download",
        "in": "query",
        "required": False,
        "description": "Present (any value, or none): `Content-Disposition: attachment`, so"
        " that a browser saves the file instead of opening it.",
        "schema": {"type": "string"},
        "allowEmptyValue": True,
    },
]


def download(summary: str, extra_parameters: list[Json], description: str) -> Json:
    """GET and HEAD of one of a file's URLs: the bytes, with validators and ranges."""
    responses: Json = {
        "200": {
            "description": "The file, as the type its name or its bytes say.",
            "headers": DOWNLOAD_HEADERS,
            "content": {"*/*": {"schema": {}}},
        },
        "206": {
            "description": "The range asked for.",
            "headers": {
                **DOWNLOAD_HEADERS,
                "Content-Range": {"schema": {"type": "string"}, "required": True},
            },
            "content": {"*/*": {"schema": {}}},
        },
        "304": {"description": "Not modified (If-None-Match, If-Modified-Since)."},
        "412": {"description": "If-Match or If-Unmodified-Since names another file."},
        "404": html("No file with this hash (never stored, deleted or expired)."),
        "416": {"description": "The range is past the end of the file."},
        "429": html(
            "`limits.downloads_in_flight_per_address` downloads of files over 64 KiB from "
            "this address are in progress; `Retry-After` says when to try again."
        ),
        "451": html("The file was taken down by the admin."),
        "503": html(
            "The database or the file storage is out of reach for a moment, or the server "
            "is sending `limits.downloads_in_flight` big files; `Retry-After` says when to "
            "try again."
        ),
    }
    parameters = [HASH_PARAMETER, *extra_parameters, *DOWNLOAD_PARAMETERS]
    operation: Json = {
        "tags": ["files"],
        "summary": summary,
        "description": description,
        "security": [{}],
        "parameters": parameters,
        "responses": responses,
    }
    return {
        "get": {**operation, "operationId": "download" + summary.split()[-1].title()},
        "head": {
            **operation,
            "operationId": "head" + summary.split()[-1].title(),
            "summary": summary + " (headers only)",
            "responses": {
                code: {k: v for k, v in answer.items() if k != "content"}
                for code, answer in responses.items()
            },
        },
    }


FILE_PATHS: Json = {
    "/{hash}": download("The file by its hash", [], "The file, its type sniffed from its bytes."),
    "/{hash}.{ext}": download(
        "The file with an extension",
        [
            path_parameter(
                "ext",
                {"type": "string", "pattern": "^[^/]+$"},
                "png",
                "Any extension; it sets the Content-Type when it is a known one.",
            )
        ],
        "The same file; the extension only chooses the Content-Type.",
    ),
    "/{hash}/{filename}": download(
        "The file with a filename",
        [
            path_parameter(
                "filename",
                {"type": "string", "minLength": 1},
                "image.png",
                "Any filename: it sets the Content-Type and Content-Disposition.",
            )
        ],
        "The same file, served inline under that name.",
    ),
    "/thumbs/{hash}.webp": {
        "get": {
            "tags": ["files"],
            "operationId": "thumbnail",
            "summary": "An image's thumbnail (WebP, 320x320 at most)",
            "security": [{}],
            "parameters": [HASH_PARAMETER],
            "responses": {
                "200": {
                    "description": "The thumbnail.",
                    "content": {"image/webp": {"schema": {}}},
                },
                "302": redirect("An image that cannot be thumbnailed: a placeholder picture."),
                "404": html("No file, or not an image."),
                "451": html("The file was taken down by the admin."),
                "503": {
                    "description": "Too many thumbnails waiting; `Retry-After` says when.",
                    "headers": {"Retry-After": ref("headers", "Retry-After")},
                    "content": {"image/svg+xml": {"schema": {}}},
                },
            },
        }
    },
    "/api/files/{hash}": {
        "delete": {
            "tags": ["files"],
            "operationId": "deleteFile",
            "summary": "Delete the key's account's uploads of a file",
            "description": "The bytes stay while another upload (anyone's) still has them. "
            "A hash the account has no upload of is a 404, whoever holds it.",
            "security": [{"apiKey": []}],
            "parameters": [HASH_PARAMETER],
            "responses": {
                "200": {
                    "description": "Deleted.",
                    "content": {"application/json": {"schema": ref("schemas", "Deleted")}},
                },
                "400": api_error("Not a hash."),
                "401": api_error(
                    "No key, or not a usable one.",
                    **{"WWW-Authenticate": ref("headers", "WWW-Authenticate")},
                ),
                "404": api_error("The account has no upload with this hash."),
                "429": api_error(
                    "Too many invalid API keys from this address (`limits.invalid_keys_per_hour`).",
                    **{"Retry-After": ref("headers", "Retry-After")},
                ),
                "503": api_error("The server is busy checking other keys; retry soon."),
            },
        }
    },
}


# -- deletion links -------------------------------------------------------------------------

TOKEN_PARAMETER = path_parameter(
    "token",
    {"type": "string", "pattern": f"^{DELETE_TOKEN_PATTERN.pattern}$"},
    "q" * 43,
    "The deletion token from an upload's `delete_url`.",
)


def html_or_json(description: str) -> Json:
    """A page, or the API's error JSON for a script that asks for JSON."""
    return {
        "description": description,
        "content": {**html("")["content"], **api_error("")["content"]},
    }


LINK_ERRORS: Json = {
    "400": html_or_json("Not a deletion link (cut short?)."),
    "404": html_or_json("No upload ever had this link."),
    "410": html_or_json("The upload is deleted already."),
}

DELETION_PATHS: Json = {
    "/delete/{token}": {
        "get": {
            "tags": ["deletion"],
            "operationId": "showDeletionLink",
            "summary": "What a deletion link deletes, with a Delete button (deletes nothing)",
            "security": [{}],
            "parameters": [TOKEN_PARAMETER],
            "responses": {
                "200": html("The file and a Delete button."),
                **LINK_ERRORS,
            },
        },
        "post": {
            "tags": ["deletion"],
            "operationId": "useDeletionLink",
            "summary": "Delete the one upload the link belongs to",
            "description": "The token is the authority: no session or xsrf token is needed. "
            "A page, or the API's JSON for `Accept: application/json` (without text/html).",
            "security": [{}],
            "parameters": [TOKEN_PARAMETER],
            "responses": {
                "200": {
                    "description": "Deleted.",
                    "content": {
                        **html("")["content"],
                        "application/json": {"schema": ref("schemas", "Deleted")},
                    },
                },
                **LINK_ERRORS,
            },
        },
        "delete": {
            "tags": ["deletion"],
            "operationId": "deleteByLink",
            "summary": "Delete the one upload the link belongs to; JSON answer",
            "description": "As POST, for scripts: the API's JSON, errors included.",
            "security": [{}],
            "parameters": [TOKEN_PARAMETER],
            "responses": {
                "200": {
                    "description": "Deleted.",
                    "content": {"application/json": {"schema": ref("schemas", "Deleted")}},
                },
                "400": api_error("Not a deletion link (cut short?)."),
                "404": api_error("No upload ever had this link."),
                "410": api_error("The upload is deleted already."),
            },
        },
    },
}


# -- API keys and the /api page --------------------------------------------------------------

SESSION_FORM_ERRORS: Json = {
    "403": html("No session (sign in first), or a missing or wrong xsrf token."),
}

KEY_ID_PARAMETER = path_parameter(
    "key_id",
    {"type": "string", "pattern": "^[0-9a-f]{16}$"},
    "0123456789abcdef",
    "The key's id: the 16 hex digits after `hk_`.",
)

KEY_PATHS: Json = {
    "/api": {
        "get": {
            "tags": ["keys"],
            "operationId": "apiPage",
            "summary": "The API's documentation; a signed-in user's keys",
            "security": [{}, {"session": []}],
            "responses": {"200": html("The page (with htmx, only its keys section).")},
        }
    },
    "/api/keys": {
        "get": {
            "tags": ["keys"],
            "operationId": "keysPage",
            "summary": "The same page as /api",
            "security": [{}, {"session": []}],
            "responses": {"200": html("The page.")},
        },
        "post": {
            "tags": ["keys"],
            "operationId": "makeKey",
            "summary": "Make an API key (shown once)",
            "description": "A signed-in browser's form (session cookie and xsrf token). With "
            "htmx the answer is the keys section with the new key; a plain form is "
            "redirected to /api, which shows it once.",
            "security": [{"session": []}],
            "requestBody": form_request({"label": {"type": "string", "maxLength": 100}}),
            "responses": {
                "200": html("The keys section with the new key (htmx)."),
                "303": redirect("To /api, which shows the new key once."),
                "400": html("A label over 100 characters."),
                "409": html("The account holds `accounts.max_keys` usable keys already."),
                "503": html("The server is busy; try again in a few seconds."),
                **SESSION_FORM_ERRORS,
            },
        },
    },
    "/api/keys/{key_id}/invalidate": {
        "get": {
            "tags": ["keys"],
            "operationId": "confirmInvalidateKey",
            "summary": "Ask to confirm invalidating a key",
            "security": [{"session": []}],
            "parameters": [KEY_ID_PARAMETER],
            "responses": {
                "200": html("The confirmation form."),
                "302": redirect("Not signed in: to the sign-in page."),
                "404": html("The account has no key with this id."),
            },
        },
        "post": {
            "tags": ["keys"],
            "operationId": "invalidateKey",
            "summary": "Invalidate a key (with confirm=yes); it stops on the next request",
            "security": [{"session": []}],
            "parameters": [KEY_ID_PARAMETER],
            "requestBody": form_request({"confirm": {"type": "string", "enum": ["yes"]}}),
            "responses": {
                "200": html("Without confirm=yes: the form; with htmx: the key's new row."),
                "303": redirect("Invalidated: back to /api."),
                "404": html("The account has no key with this id."),
                **SESSION_FORM_ERRORS,
            },
        },
    },
    "/api/sharex.sxcu": {
        "get": {
            "tags": ["keys"],
            "operationId": "sharexUploader",
            "summary": "A ShareX custom uploader for this server (anonymous uploads)",
            "security": [{}],
            "responses": {
                "200": {
                    "description": "The .sxcu file, as an attachment.",
                    "content": {"application/json": {"schema": ref("schemas", "ShareX")}},
                },
                "404": html("The server takes no anonymous uploads (allow_anonymous off)."),
            },
        }
    },
    "/api/openapi.json": {
        "get": {
            "tags": ["meta"],
            "operationId": "openapi",
            "summary": "This document",
            "security": [{}],
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1, JSON.",
                    "headers": {"ETag": {"schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "304": {"description": "Not modified (If-None-Match)."},
            },
        }
    },
}


# -- browser pages ---------------------------------------------------------------------------

UPLOAD_ID_PARAMETER = path_parameter(
    "upload_id",
    {"type": "string", "pattern": "^[0-9]+$"},
    "1",
    "An upload's id, as /files lists it.",
)

SIGNED_IN_ONLY = {
    "200": html("The page."),
    "302": redirect("Not signed in: to the sign-in page."),
}


def account_form(operation: str, summary: str, fields: list[str]) -> Json:
    return {
        "get": {
            "tags": ["pages"],
            "operationId": f"{operation}Page",
            "summary": f"The {summary} form",
            "security": [{}],
            "responses": {
                "200": html("The form."),
                "403": html("Registration is closed here."),
            },
        },
        "post": {
            "tags": ["pages"],
            "operationId": operation,
            "summary": summary.capitalize(),
            "description": "A form post with the page's xsrf token; on success a session "
            "cookie and a redirect.",
            "security": [{}],
            "requestBody": form_request({name: {"type": "string"} for name in fields}),
            "responses": {
                "303": redirect("Signed in."),
                "400": html("The form again, with what is wrong."),
                "401": html("Wrong name or password."),
                "403": html("A missing or wrong xsrf token; a disabled account; closed."),
                "429": {
                    **html("Too many attempts; `Retry-After` says when to try again."),
                    "headers": {"Retry-After": ref("headers", "Retry-After")},
                },
                "503": html("The server is busy checking other passwords."),
            },
        },
    }


PAGE_PATHS: Json = {
    "/": {
        "get": {
            "tags": ["pages"],
            "operationId": "index",
            "summary": "The upload page",
            "security": [{}, {"session": []}],
            "responses": {"200": html("The page.")},
        },
        "post": {
            "tags": ["uploads"],
            "operationId": "uploadAtRoot",
            "summary": "Upload a file as 0x0.st takes one; the file's URL as plain text",
            "description": "POST /api/upload's upload (a Bearer key registers it), answered "
            "with the file's `ext` URL on one line; refusals are `ERROR <message>`.",
            "security": [{}, {"apiKey": []}],
            "parameters": [*EXPIRES_PARAMETERS],
            "requestBody": FORM_UPLOAD,
            "responses": {
                "200": {
                    "description": "Stored (or the same bytes were there already).",
                    "headers": UPLOAD_ANSWER_HEADERS,
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **{
                    code: {
                        "description": text,
                        "content": {
                            "text/plain": {"schema": {"type": "string", "pattern": "^ERROR "}}
                        },
                    }
                    for code, text in UPLOAD_ERRORS.items()
                },
                "431": HEAD_TOO_BIG,
            },
        },
    },
    "/login": account_form("signIn", "sign-in", ["name", "password"]),
    "/register": account_form("register", "registration", ["name", "password", "confirm"]),
    "/logout": {
        "post": {
            "tags": ["pages"],
            "operationId": "signOut",
            "summary": "Sign out (ends the session)",
            "security": [{"session": []}],
            "responses": {"303": redirect("To the upload page."), **SESSION_FORM_ERRORS},
        }
    },
    "/account": {
        "get": {
            "tags": ["pages"],
            "operationId": "accountPage",
            "summary": "The account page: change the password, sign out everywhere",
            "security": [{"session": []}],
            "parameters": [
                {"name": "done", "in": "query", "required": False, "schema": {"type": "string"}}
            ],
            "responses": SIGNED_IN_ONLY,
        },
        "post": {
            "tags": ["pages"],
            "operationId": "changeAccount",
            "summary": "Change the password (ends every other session), or sign out everywhere",
            "security": [{"session": []}],
            "requestBody": form_request(
                {
                    "action": {
                        "type": "string",
                        "enum": ["change-password", "sign-out-everywhere"],
                    },
                    "current": {"type": "string"},
                    "new": {"type": "string"},
                    "confirm": {"type": "string"},
                }
            ),
            "responses": {
                "303": redirect("Changed: back to /account; signed out: to /login."),
                "400": html("The form again, with what is wrong with the new password."),
                "401": html("The current password is wrong."),
                "429": {
                    **html("Too many wrong passwords; `Retry-After` says when to try again."),
                    "headers": {"Retry-After": ref("headers", "Retry-After")},
                },
                "503": {
                    **html("The server is busy checking other passwords."),
                    "headers": {"Retry-After": ref("headers", "Retry-After")},
                },
                **SESSION_FORM_ERRORS,
            },
        },
    },
    "/files": {
        "get": {
            "tags": ["pages"],
            "operationId": "myFiles",
            "summary": "A signed-in user's uploads",
            "security": [{"session": []}],
            "parameters": [
                {
                    "name": "page",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                }
            ],
            "responses": {**SIGNED_IN_ONLY, "400": html("Not a page number.")},
        }
    },
    "/files/{upload_id}": {
        "delete": {
            "tags": ["pages"],
            "operationId": "deleteUpload",
            "summary": "Delete one of the user's uploads (htmx)",
            "security": [{"session": []}],
            "parameters": [UPLOAD_ID_PARAMETER],
            "responses": {
                "200": {
                    "description": "Deleted: with HX-Request, the list's page again (its"
                    " `page` query parameter), else an empty body.",
                    "content": {"text/html": {"schema": {}}},
                },
                "404": html("The user has no upload with this id."),
                **SESSION_FORM_ERRORS,
            },
        },
        "post": {
            "tags": ["pages"],
            "operationId": "deleteUploadForm",
            "summary": "Delete one of the user's uploads (a plain form, confirm=yes)",
            "security": [{"session": []}],
            "parameters": [UPLOAD_ID_PARAMETER],
            "responses": {
                "200": html("Without confirm=yes: the confirmation form."),
                "303": redirect("Deleted: back to /files."),
                "404": html("The user has no upload with this id."),
                **SESSION_FORM_ERRORS,
            },
        },
    },
}
# The plain form posts to .../delete; it is the same handler as /files/{upload_id}.
PAGE_PATHS["/files/{upload_id}/delete"] = {
    method: {**operation, "operationId": operation["operationId"] + "Alias"}
    for method, operation in PAGE_PATHS["/files/{upload_id}"].items()
}


# -- static files ----------------------------------------------------------------------------


def static_file(operation: str, summary: str, parameters: list[Json]) -> Json:
    answers: Json = {
        "200": {"description": "The file.", "content": {"*/*": {"schema": {}}}},
        "304": {"description": "Not modified."},
        "404": {"description": "No such file.", "content": {"text/html": {"schema": {}}}},
    }
    get: Json = {
        "tags": ["meta"],
        "operationId": operation,
        "summary": summary,
        "security": [{}],
        "parameters": parameters,
        "responses": answers,
    }
    head = {**get, "operationId": operation + "Head"}
    return {"get": get, "head": head}


STATIC_PATHS: Json = {
    "/static/{path}": static_file(
        "static",
        "The pages' scripts, stylesheet and pictures (versioned by a `v` query)",
        [
            path_parameter(
                "path", {"type": "string"}, "hostd.css", "A file in hostd's static folder."
            ),
            {"name": "v", "in": "query", "required": False, "schema": {"type": "string"}},
        ],
    ),
    "/favicon.ico": static_file("favicon", "The site icon, when the static folder has one", []),
    "/robots.txt": static_file("robots", "robots.txt, when the static folder has one", []),
}


# -- monitoring ------------------------------------------------------------------------------

MONITORING_PATHS: Json = {
    "/healthz": {
        "get": {
            "tags": ["meta"],
            "operationId": "health",
            "summary": "For load balancers: the database answers and the store is reachable",
            "security": [{}],
            "responses": {
                "200": {"description": "`ok`.", "content": {"text/plain": {"schema": {}}}},
                "503": {
                    "description": "What failed, a line each.",
                    "content": {"text/plain": {"schema": {}}},
                },
            },
        }
    },
    "/metrics": {
        "get": {
            "tags": ["meta"],
            "operationId": "metrics",
            "summary": "Prometheus's text format (metrics.enabled; from metrics.allow)",
            "security": [{}],
            "responses": {
                "200": {
                    "description": "The metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "403": html("This address is not in metrics.allow."),
                "404": html("Metrics are off (metrics.enabled)."),
            },
        }
    },
}


# -- raw-body and resumable uploads ------------------------------------------------------------


@functools.cache
def filename_pattern() -> str:
    """The characters clean_filename() takes, as a pattern: none of NOT_IN_FILENAMES (as
    this Python's Unicode tables have them: found once, a quarter of a second), no slashes."""
    refused = [
        c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in NOT_IN_FILENAMES
    ]
    ranges: list[list[int]] = []
    for c in refused:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    spans = "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in ranges)
    return f"^[^{spans}/\\\\]+$"


BINARY: Json = {"type": "string", "format": "binary"}

# The file as the whole body: PUT /api/upload/{filename}, or with no name PUT /api/upload.
PUT_UPLOAD: Json = {
    "tags": ["uploads"],
    "security": [{}, {"apiKey": []}],
    "requestBody": {
        "required": True,
        "description": "The file's bytes, any (but not none: an empty body is a 400), "
        "sent with any Content-Type or none: the type is read from the bytes.",
        "content": {
            # minLength counts the bytes of a binary body, not characters of JSON.
            "application/octet-stream": {"schema": {**BINARY, "minLength": 1}}
        },
    },
    "responses": UPLOAD_PATHS["/api/upload"]["post"]["responses"],
}


def put_upload_paths() -> Json:
    """PUT /api/upload/{filename}: a function, as its name pattern takes a quarter of a second
    to find, which a process that never serves this document (the CLI) should not spend."""
    return {
        "/api/upload/{filename}": {
            "put": {
                **PUT_UPLOAD,
                "operationId": "uploadPut",
                "summary": "Upload the body as a file named {filename} (`curl -T`); JSON answer",
                "description": "Keys, limits, expiry and answers are those of POST /api/upload.",
                "parameters": [
                    path_parameter(
                        "filename",
                        {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_FILENAME_BYTES,
                            "pattern": filename_pattern(),
                            "not": {"enum": [".", ".."]},
                        },
                        "image.png",
                        f"The file's name (URL-encoded): at most {MAX_FILENAME_BYTES} bytes of "
                        "UTF-8, no path parts, no control or format characters; a 400 otherwise.",
                    ),
                    *EXPIRES_PARAMETERS,
                ],
            }
        },
    }


UNNAMED_PUT_UPLOAD: Json = {
    **PUT_UPLOAD,
    "operationId": "uploadPutUnnamed",
    "summary": "Upload the body as a file with no name; JSON answer",
    "description": "As PUT /api/upload/{filename}, for `curl -T FILE <server>/api/upload` and "
    "`curl -T - <server>/api/upload/` (curl names neither): the file is named `file`. "
    "/api/upload/ (with the slash) is the same.",
    "parameters": [*EXPIRES_PARAMETERS],
}

TUS_ERRORS: Json = {
    "400": api_error("A malformed tus request (a header, the metadata, a body where none goes)."),
    "401": api_error("A Bearer header that is not a usable key; or no account where needed."),
    "403": api_error("A browser session without the page's xsrf token."),
    "404": api_error("No such upload, or another account's."),
    "412": api_error(
        "No Tus-Resumable, or one other than 1.0.0 (the version spoken is in Tus-Version).",
        **{"Tus-Version": {"required": True, "schema": {"const": "1.0.0"}}},
    ),
    "410": api_error("Expired, or the file it became has been deleted."),
    "413": api_error("Larger than the limit, the quota, or what the upload lacks."),
    "423": api_error("The upload is being finished or written; ask again in a moment."),
    "429": api_error(
        "Too many unfinished uploads or uploads in flight, or too many invalid API keys "
        "from this address."
    ),
    "451": api_error("These bytes are banned from this server (the upload is dropped)."),
    "503": api_error("The server is busy or shutting down."),
    "507": api_error("The server is out of storage space."),
}
# Every tus request but OPTIONS must carry it, hostd's GET too (a 412 otherwise).
TUS_RESUMABLE: Json = {
    "name": "Tus-Resumable",
    "in": "header",
    "required": True,
    "schema": {"const": "1.0.0"},
}
TUS_ID_PARAMETER = path_parameter(
    "id",
    {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
    "q" * 32,
    "The upload's id, the last segment of the Location a creation answered; any other "
    "segment is a 404 as an unknown id is.",
)


def tus_errors(*codes: str, body: bool = True) -> Json:
    """The tus refusals with these codes: JSON, but for a HEAD, whose answers have no body."""
    answers = {code: TUS_ERRORS[code] for code in codes}
    if body:
        return answers
    return {code: {k: v for k, v in a.items() if k != "content"} for code, a in answers.items()}


# Whoever asks about an upload: bad auth, no or another tus version, no such upload.
TUS_ASKING = ("400", "401", "403", "404", "412", "503")
# Asking about an upload whose bytes are all in registers it first (see the handler).
TUS_FINISHING = ("410", "413", "423", "451", "507")
UPLOAD_INFO = {
    "Upload-Info": {
        "description": "Once the last byte is in: the JSON /api/upload answers.",
        "schema": {"type": "string"},
    },
    "X-Delete-Url": {"schema": {"type": "string"}},
    "X-Expires": {"schema": {"type": "string"}},
}

TUS_PATHS: Json = {
    "/api/tus/": {
        "options": {
            "tags": ["uploads"],
            "operationId": "tusOptions",
            "summary": "tus discovery: the version, extensions, checksum and size limit",
            "description": "Needs no `Tus-Resumable` and no authentication. `Tus-Max-Size` "
            "is `limits.max_upload_bytes`; an anonymous upload may be held to a lower "
            "`limits.anonymous_max_upload_bytes`, which its creation answers with a 413.",
            "security": [{}],
            "responses": {
                "204": {
                    "description": "No body; what the server speaks, in its headers.",
                    "headers": {
                        name: {"schema": {"type": "string"}}
                        for name in (
                            "Tus-Resumable",
                            "Tus-Version",
                            "Tus-Extension",
                            "Tus-Max-Size",
                            "Tus-Checksum-Algorithm",
                            "Allow",
                        )
                    },
                }
            },
        },
        "post": {
            "tags": ["uploads"],
            "operationId": "tusCreate",
            "summary": "tus 1.0 creation (and creation-with-upload)",
            "description": "Auth as POST /api/upload (a Bearer key), or a browser session "
            "with the page's xsrf token; `Upload-Metadata` carries `filename` (and "
            "`filetype`, `expires`).",
            "security": [{}, {"apiKey": []}, {"session": []}],
            "parameters": [
                TUS_RESUMABLE,
                {
                    "name": "Upload-Length",
                    "in": "header",
                    "required": True,
                    "description": "The file's size: not 0 (an empty file is a 400).",
                    "schema": {"type": "string", "pattern": "^0*[1-9][0-9]*$"},
                },
                {
                    "name": "Upload-Metadata",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                },
            ],
            "requestBody": {
                "content": {"application/offset+octet-stream": {"schema": BINARY}},
            },
            "responses": {
                "201": {
                    "description": "Created; its URL in Location.",
                    "headers": {
                        "Location": ref("headers", "Location"),
                        "Upload-Offset": {"schema": {"type": "string"}},
                        "Upload-Expires": {"schema": {"type": "string"}},
                        **UPLOAD_INFO,
                    },
                },
                **TUS_ERRORS,
                "408": api_error("The first part stalled; the upload is dropped."),
                "415": api_error("A first part not sent as application/offset+octet-stream."),
                "460": api_error("The first part does not match its Upload-Checksum."),
            },
        },
    },
    "/api/tus/{id}": {
        "head": {
            "tags": ["uploads"],
            "operationId": "tusOffset",
            "summary": "Where a tus upload stands (Upload-Offset, Upload-Length)",
            "security": [{}, {"apiKey": []}, {"session": []}],
            "parameters": [TUS_ID_PARAMETER, TUS_RESUMABLE],
            "responses": {
                "200": {"description": "Where it stands.", "headers": UPLOAD_INFO},
                **tus_errors(*TUS_ASKING, *TUS_FINISHING, body=False),
            },
        },
        "get": {
            "tags": ["uploads"],
            "operationId": "tusState",
            "summary": "Where a tus upload stands, and once finished the answer of /api/upload",
            "security": [{}, {"apiKey": []}, {"session": []}],
            "parameters": [TUS_ID_PARAMETER, TUS_RESUMABLE],
            "responses": {
                "200": {
                    "description": "JSON: offset, length, complete; and the upload's answer.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **tus_errors(*TUS_ASKING, *TUS_FINISHING),
            },
        },
        "patch": {
            "tags": ["uploads"],
            "operationId": "tusPatch",
            "summary": "The next part of a tus upload",
            "security": [{}, {"apiKey": []}, {"session": []}],
            "parameters": [
                TUS_ID_PARAMETER,
                TUS_RESUMABLE,
                {
                    "name": "Upload-Offset",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
                {
                    "name": "Upload-Checksum",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^sha256 "},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {"application/offset+octet-stream": {"schema": BINARY}},
            },
            "responses": {
                "204": {
                    "description": "Stored; the new Upload-Offset (and Upload-Info at the end).",
                    "headers": {"Upload-Offset": {"schema": {"type": "string"}}, **UPLOAD_INFO},
                },
                **TUS_ERRORS,
                "408": api_error("The part stalled; what arrived is kept."),
                "409": api_error("Upload-Offset is not where the upload stands."),
                "415": api_error("Not application/offset+octet-stream."),
                "460": api_error("The part does not match its Upload-Checksum."),
            },
        },
        "delete": {
            "tags": ["uploads"],
            "operationId": "tusTerminate",
            "summary": "Drop an unfinished tus upload (termination)",
            "security": [{}, {"apiKey": []}, {"session": []}],
            "parameters": [TUS_ID_PARAMETER, TUS_RESUMABLE],
            "responses": {
                "204": {"description": "Dropped."},
                **tus_errors(*TUS_ASKING, "410", "423"),
            },
        },
    },
}


COMPONENTS: Json = {
    "securitySchemes": {
        "apiKey": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "hk_<16 hex digits>_<43 characters>",
            "description": "An API key, made on the /api page while signed in (or with "
            "`hostd key create`), shown once. Uploads with it are registered to its account.",
        },
        "session": {
            "type": "apiKey",
            "in": "cookie",
            "name": "hostd_session",
            "description": "A browser session from /login. Every POST and DELETE with it "
            "also needs the `_xsrf` cookie's value, as an `_xsrf` form field or an "
            "`X-XSRFToken` header.",
        },
    },
    "schemas": {
        "Hash": {
            "type": "string",
            "pattern": HASH_PATTERN,
            "description": "The public hash: the SHA-256 of the bytes in URL-safe base64, "
            f"{PUBLIC_HASH_MIN} characters (up to {PUBLIC_HASH_MAX} when a shorter one is "
            "taken). The same bytes always get the same hash.",
        },
        "Upload": {
            "type": "object",
            "required": ["hash", "status", "urls", "expires_at", "delete_url"],
            "properties": {
                "hash": ref("schemas", "Hash"),
                "status": {"const": True},
                "urls": {
                    "type": "object",
                    "required": ["base", "full", "ext", "hash"],
                    "properties": {
                        "base": {"type": "string", "format": "uri"},
                        "full": {"type": "string", "format": "uri"},
                        "ext": {"type": "string", "format": "uri"},
                        "hash": {"type": "string", "format": "uri"},
                    },
                },
                "expires_at": {
                    "type": ["string", "null"],
                    "format": "date-time",
                    "description": "When the upload expires (UTC), or null for never.",
                },
                "delete_url": {
                    "type": "string",
                    "format": "uri",
                    "description": "Deletes this upload (POST); shown only here.",
                },
            },
        },
        "Deleted": {
            "type": "object",
            "required": ["status", "deleted"],
            "properties": {
                "status": {"const": True},
                "deleted": {"type": "integer", "minimum": 1},
            },
        },
        "ApiError": {
            "type": "object",
            "required": ["status", "error"],
            "properties": {"status": {"const": False}, "error": {"type": "string"}},
        },
        "ShareX": {
            "type": "object",
            "required": ["Version", "Name", "RequestMethod", "RequestURL", "Body", "FileFormName"],
            "properties": {
                "Version": {"type": "string"},
                "Name": {"type": "string"},
                "DestinationType": {"type": "string"},
                "RequestMethod": {"const": "POST"},
                "RequestURL": {"type": "string", "format": "uri"},
                "Body": {"const": "MultipartFormData"},
                "FileFormName": {"const": "file"},
                "URL": {"type": "string"},
                "DeletionURL": {"type": "string"},
                "ErrorMessage": {"type": "string"},
            },
        },
    },
    "headers": {
        "X-Delete-Url": {
            "description": "The upload's deletion link.",
            "required": True,
            "schema": {"type": "string", "format": "uri"},
        },
        "X-Expires": {
            "description": "When the upload expires: an HTTP date, or `never`.",
            "required": True,
            "schema": {"type": "string"},
        },
        "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}},
        "WWW-Authenticate": {"schema": {"type": "string"}},
        "Location": {"required": True, "schema": {"type": "string"}},
    },
}


def document(server: str = "/") -> Json:
    """The whole document (a new dict each call); `server` is the API's base URL
    (server.public_url's, which may have a path, else the root of the host asked)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hostd",
            "version": __version__,
            "summary": "A self-hosted, content-addressed file host.",
            "description": "Upload with curl, ShareX, Flameshot or the browser; files are "
            "served at their hash. Every path also answers OPTIONS (the methods it takes, in "
            "`Allow`), and a method it does not take with 405 and `Allow`. JSON endpoints "
            'answer errors as `{"status": false, "error": "<why>"}`; pages answer them '
            "with an HTML page.",
        },
        "servers": [{"url": server}],
        "tags": [
            {"name": "uploads"},
            {"name": "files", "description": "Downloads, thumbnails, deleting by key."},
            {"name": "deletion", "description": "Each upload's own deletion link."},
            {"name": "keys", "description": "API keys and the /api page."},
            {"name": "pages", "description": "The browser's pages and forms."},
            {"name": "meta"},
        ],
        "paths": with_head_too_big(
            copy.deepcopy(
                {
                    **UPLOAD_PATHS,
                    "/api/upload": {
                        **UPLOAD_PATHS["/api/upload"],
                        "put": UNNAMED_PUT_UPLOAD,
                        "options": UPLOAD_OPTIONS,
                    },
                    **FILE_PATHS,
                    **DELETION_PATHS,
                    **KEY_PATHS,
                    **PAGE_PATHS,
                    **STATIC_PATHS,
                    **MONITORING_PATHS,
                    **put_upload_paths(),
                    **TUS_PATHS,
                }
            )
        ),
        "components": COMPONENTS,
    }


@functools.cache
def document_bytes(server: str = "/") -> bytes:
    """The document as served: built once a process, it never changes while it runs."""
    return json.dumps(document(server), indent=1).encode() + b"\n"
