"""Blobs in S3-compatible object storage: S3BlobStore, behind the BlobStore interface.

obstore (Rust's object_store) carries the bytes: bench/s3_clients.py measured it against
aiobotocore on SeaweedFS (faster, and a quarter of the memory). What obstore does not offer
(the bucket check, listing and aborting incomplete multipart uploads, presigned URLs with
our Content-Type) are three signed requests made here with SigV4 and Tornado's client.

Keys: a blob is `<prefix><sha256>`; an upload in progress streams to `<prefix>tmp/<id>`
(a multipart upload, parts of PART_BYTES, at most PARTS_IN_FLIGHT in flight) and is copied
to its blob key once its SHA-256 is known, unless that exists already. A small upload
(under SINGLE_PUT_BYTES) is kept in memory and sent with one PUT straight to its blob key.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import hmac
import logging
import os
import secrets
import shutil
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import tornado.httpclient

from hostd.config import Config, ConfigError
from hostd.hashes import is_sha256
from hostd.storage import (
    HEAD_BYTES,
    BlobDamaged,
    BlobMissing,
    KeyedLocks,
    StoredBlob,
    StoreUnavailable,
    WrittenBlob,
)

if TYPE_CHECKING:
    from obstore.store import S3Config

log = logging.getLogger("hostd")

MiB = 1024 * 1024
PART_BYTES = 8 * MiB
PARTS_IN_FLIGHT = 2
# Smaller uploads go up in one PUT from memory; bigger ones start a multipart upload.
SINGLE_PUT_BYTES = 1 * MiB
# obstore takes the bytes in pieces of up to FEED_BYTES (each a trip between its threads
# and the IOLoop); the client's body waits while 2 * FEED_BYTES are queued, until the queue
# is under FEED_BYTES again.
FEED_BYTES = 2 * MiB
READ_CHUNK_BYTES = 1 * MiB
# Temp objects and incomplete multipart uploads older than this are a crash's leftovers.
STALE_SECONDS = 3600.0
PRESIGNED_SECONDS = 300
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

T = TypeVar("T")


@dataclass(frozen=True)
class S3Settings:
    """[storage.s3], with the credentials read (from the environment or the key files)."""

    bucket: str
    access_key: str
    secret_key: str = ""
    endpoint: str | None = None
    region: str = "us-east-1"
    prefix: str = "blobs/"
    path_style: bool = False
    redirect: bool = False

    @property
    def base_url(self) -> str:
        """The bucket's URL, without a trailing slash."""
        endpoint = (self.endpoint or f"https://s3.{self.region}.amazonaws.com").rstrip("/")
        if self.path_style:
            return f"{endpoint}/{self.bucket}"
        scheme, _, host = endpoint.partition("://")
        return f"{scheme}://{self.bucket}.{host}"


class UploadAborted(Exception):
    """Raised into obstore's upload from its source, so that it aborts the multipart upload
    (a cancelled upload would leave its parts behind)."""


class S3BlobWriter:
    """Hashes an upload as it arrives; past SINGLE_PUT_BYTES, streams it to a temp key as a
    multipart upload, which the client's body waits for (backpressure) when it falls behind."""

    def __init__(self, store: S3BlobStore) -> None:
        self._store = store
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._more = asyncio.Event()  # the feed waits for bytes (or the end)
        self._room = asyncio.Event()  # the writer waits for the feed to take bytes
        self._upload: asyncio.Future[None] | None = None
        self.temp_key: str | None = None
        self.data: bytes | None = None  # a small upload's bytes, after commit()
        self._ended = False
        self._aborted = False
        self.placed = False
        self.size_bytes = 0

    def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._hash.update(chunk)
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        if len(self._head) < HEAD_BYTES:
            self._head += chunk[: HEAD_BYTES - len(self._head)]
        self.size_bytes += len(chunk)

    def backpressure(self) -> Awaitable[None] | None:
        if self._upload is None:
            if self._pending_bytes < SINGLE_PUT_BYTES:
                return None
            self.temp_key = self._store.temp_key()
            self._upload = asyncio.ensure_future(
                self._store.call(self._store.put_stream(self.temp_key, self._feed()))
            )
            self._upload.add_done_callback(lambda _: self._room.set())  # a failure wakes us
        self._more.set()
        if self._pending_bytes < 2 * FEED_BYTES and not self._upload.done():
            return None
        return self._drained()

    async def _drained(self) -> None:
        assert self._upload is not None
        while self._pending_bytes >= FEED_BYTES and not self._upload.done():
            self._room.clear()
            await self._room.wait()
        if self._upload.done():
            self._upload.result()  # raises what stopped it (StoreUnavailable)

    async def _feed(self) -> AsyncIterator[bytes]:
        """The bytes for obstore, in pieces of up to FEED_BYTES, as they arrive."""
        while True:
            if self._aborted:
                raise UploadAborted()
            if self._pending:
                batch = []
                size = 0
                while self._pending and size < FEED_BYTES:
                    chunk = self._pending.popleft()
                    batch.append(chunk)
                    size += len(chunk)
                self._pending_bytes -= size
                self._room.set()
                yield b"".join(batch)
                continue
            if self._ended:
                return
            self._more.clear()
            await self._more.wait()

    async def commit(self) -> WrittenBlob:
        if self._upload is None:
            self.data = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
        else:
            self._ended = True
            self._more.set()
            try:
                await self._upload
            except BaseException:
                gone = self.abort()
                if gone is not None:
                    await gone
                raise
        return WrittenBlob(self._hash.hexdigest(), self.size_bytes, bytes(self._head), self)

    def abort(self) -> Awaitable[None] | None:
        """Stop the upload: obstore aborts the multipart upload when its source raises; a
        temp object already complete is deleted. The awaitable is done when both are."""
        self._aborted = True
        self._pending.clear()
        self._pending_bytes = 0
        self.data = None
        self._more.set()
        self._room.set()
        if self._upload is None or self.placed:
            return None
        return asyncio.ensure_future(self._clean_up(self._upload))

    async def _clean_up(self, upload: asyncio.Future[None]) -> None:
        try:
            await upload
        except BaseException:
            return  # aborted by obstore, or never made: nothing to delete
        if self.temp_key is not None and not self.placed:
            self.placed = True  # cleaned up: nothing left to do twice
            try:
                await self._store.call(self._store.delete_key(self.temp_key))
            except StoreUnavailable as exc:
                log.warning(
                    "could not delete temp object %s (removed later): %s", self.temp_key, exc
                )


class S3BlobReader:
    """A blob in the bucket; nothing is asked of S3 until chunks() (so a 304 never is)."""

    def __init__(self, store: S3BlobStore, sha256: str, size_bytes: int | None) -> None:
        self._store = store
        self._key = store.key(sha256)
        self._sha256 = sha256
        self._size_bytes = size_bytes

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        result = await self._store.call(self._store.get(self._key, start, end + 1), self._sha256)
        if self._size_bytes is not None and result.meta["size"] != self._size_bytes:
            raise BlobDamaged(self._sha256)
        stream = result.stream(min_chunk_size=READ_CHUNK_BYTES)
        while True:
            try:
                piece = await stream.__anext__()
            except StopAsyncIteration:
                return
            except Exception as exc:
                raise unavailable(exc) from exc
            yield bytes(piece)

    async def check(self) -> None:
        meta = await self._store.call(self._store.head(self._key), self._sha256)
        if self._size_bytes is not None and meta["size"] != self._size_bytes:
            raise BlobDamaged(self._sha256)

    def close(self) -> None:
        pass


class S3BlobStore:
    """Content-addressed blobs in one bucket, under a prefix."""

    def __init__(self, settings: S3Settings, work_dir: Path) -> None:
        import obstore.store  # the s3 extra; store_from() says so when it is missing

        self.settings = settings
        self.prefix = settings.prefix
        endpoint = settings.endpoint
        s3_config: S3Config = {
            "region": settings.region,
            "access_key_id": settings.access_key,
            "secret_access_key": settings.secret_key,
            "virtual_hosted_style_request": not settings.path_style,
        }
        if endpoint:
            s3_config["endpoint"] = endpoint
        self._s3 = obstore.store.S3Store(
            settings.bucket,
            config=s3_config,
            client_options={
                "allow_http": bool(endpoint and endpoint.startswith("http://")),
                "connect_timeout": datetime.timedelta(seconds=5),
            },
            retry_config={
                "max_retries": 2,
                "retry_timeout": datetime.timedelta(seconds=10),
                "backoff": {
                    "init_backoff": datetime.timedelta(milliseconds=100),
                    "max_backoff": datetime.timedelta(seconds=1),
                    "base": 2,
                },
            },
        )
        self._guards = KeyedLocks()
        # local_copy()'s files (a thumbnail's source), per process like LocalBlobStore's temps.
        self.copies_dir = work_dir / f"s3-copies-{os.getpid()}-{secrets.token_hex(4)}"
        self._http = tornado.httpclient.AsyncHTTPClient(force_instance=True)

    def key(self, sha256: str) -> str:
        if not is_sha256(sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return f"{self.prefix}{sha256}"

    def temp_key(self) -> str:
        return f"{self.prefix}tmp/{time.time_ns()}-{secrets.token_hex(8)}"

    # -- obstore's calls, with its errors turned into ours

    async def call(self, request: Coroutine[Any, Any, T], sha256: str | None = None) -> T:
        """Await one obstore request: BlobMissing for a missing object (when a blob was
        asked for), StoreUnavailable for anything else that fails."""
        from obstore.exceptions import NotFoundError

        try:
            return await request
        except (NotFoundError, FileNotFoundError):  # obstore raises either, by call
            if sha256 is None:
                raise
            raise BlobMissing(sha256) from None
        except (StoreUnavailable, UploadAborted, BlobMissing):
            raise
        except Exception as exc:
            raise unavailable(exc) from exc

    async def put_stream(self, key: str, source: AsyncIterator[bytes]) -> None:
        import obstore

        await obstore.put_async(
            self._s3,
            key,
            source,
            use_multipart=True,
            chunk_size=PART_BYTES,
            max_concurrency=PARTS_IN_FLIGHT,
        )

    async def get(self, key: str, start: int, end: int) -> Any:
        import obstore

        return await obstore.get_async(self._s3, key, options={"range": (start, end)})

    async def delete_key(self, key: str) -> None:
        import obstore

        await obstore.delete_async(self._s3, key)

    async def head(self, key: str) -> Any:
        import obstore

        return await obstore.head_async(self._s3, key)

    # -- the BlobStore interface

    def writer(self) -> S3BlobWriter:
        return S3BlobWriter(self)

    async def place(self, written: WrittenBlob) -> bool:
        """A small upload: one PUT to its key (the same bytes again, if they are there: that
        also renews their time for gc's grace; whether they were, it cannot tell). A big
        one: a server-side copy from its temp key, unless the blob is there already; then
        the temp object goes."""
        import obstore

        writer: S3BlobWriter = written.handle
        key = self.key(written.sha256)
        if writer.temp_key is None:
            assert writer.data is not None
            await self.call(obstore.put_async(self._s3, key, writer.data))
            writer.data = None
            return True
        were_there = await self.exists(written.sha256)
        if not were_there:
            await self.call(obstore.copy_async(self._s3, writer.temp_key, key))
        writer.placed = True
        try:
            await self.call(self.delete_key(writer.temp_key))
        except StoreUnavailable as exc:
            log.warning("could not delete temp object %s (removed later): %s", writer.temp_key, exc)
        return were_there

    async def discard(self, written: WrittenBlob) -> None:
        writer: S3BlobWriter = written.handle
        gone = writer.abort()
        if gone is not None:
            await gone

    async def open(self, sha256: str, size_bytes: int | None = None) -> S3BlobReader:
        return S3BlobReader(self, sha256, size_bytes)

    async def exists(self, sha256: str) -> bool:
        try:
            await self.call(self.head(self.key(sha256)), sha256)
        except BlobMissing:
            return False
        return True

    async def delete(self, sha256: str) -> bool:
        if not await self.exists(sha256):
            return False
        await self.call(self.delete_key(self.key(sha256)))
        return True

    async def list_blobs(self, prefix: str = "") -> AsyncIterator[StoredBlob]:
        """A listing's prefix is a folder's path to obstore, not the start of a name, but S3
        lists keys in order: this starts past the keys before `prefix` (the listing's
        offset) and stops at the first key after."""
        offset = f"{self.prefix}{prefix}" if prefix else None
        async for meta in self._list(self.prefix, offset=offset):
            name = meta["path"][len(self.prefix) :]
            if not name.startswith(prefix):
                if name > prefix:
                    return
                continue  # a store that ignores the offset lists these too
            if is_sha256(name):
                yield StoredBlob(name, meta["last_modified"].timestamp(), meta["size"])

    async def _list(self, prefix: str, *, offset: str | None = None) -> AsyncIterator[Any]:
        import obstore

        stream = obstore.list(self._s3, prefix, offset=offset, chunk_size=1000)
        while True:
            try:
                batch = await stream.__anext__()
            except StopAsyncIteration:
                return
            except Exception as exc:
                raise unavailable(exc) from exc
            for meta in batch:
                yield meta

    @contextlib.asynccontextmanager
    async def local_copy(self, sha256: str) -> AsyncIterator[Path]:
        """The blob downloaded to a file under the data dir's tmp/, removed afterwards."""
        import obstore

        key = self.key(sha256)
        result = await self.call(obstore.get_async(self._s3, key), sha256)
        self.copies_dir.mkdir(parents=True, exist_ok=True)
        path = self.copies_dir / f"{sha256}-{secrets.token_hex(4)}"
        try:
            with path.open("wb") as out:
                async for piece in result.stream(min_chunk_size=PART_BYTES):
                    await asyncio.to_thread(out.write, piece)
            yield path
        finally:
            path.unlink(missing_ok=True)

    def guard(self, sha256: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self._guards.hold(sha256)

    def accel_path(self, sha256: str) -> str | None:
        return None  # nginx cannot read a bucket

    async def redirect_url(
        self, sha256: str, *, content_type: str, disposition: str | None
    ) -> str | None:
        """With storage.s3.redirect: a presigned GET that answers with our Content-Type
        (and Content-Disposition), valid for PRESIGNED_SECONDS."""
        if not self.settings.redirect:
            return None
        query = {"response-content-type": content_type}
        if disposition:
            query["response-content-disposition"] = disposition
        return presign(self.settings, self.key(sha256), query, PRESIGNED_SECONDS)

    async def check(self) -> None:
        """HEAD the bucket: StoreUnavailable with one clear line when it cannot be used."""
        where = f"bucket {self.settings.bucket!r} at {self.settings.base_url}"
        try:
            answer = await self._signed("HEAD", "")
        except OSError as exc:
            raise StoreUnavailable(f"cannot reach the S3 endpoint for {where}: {exc}") from None
        if answer.code == 404:
            raise StoreUnavailable(f"S3 {where} does not exist (create it first)")
        if answer.code in (401, 403):
            raise StoreUnavailable(
                f"S3 refused the credentials for {where} ({answer.code}): check the access key"
                " and the secret key"
            )
        if answer.code != 200:
            raise StoreUnavailable(f"S3 {where} answered {answer.code} to a HEAD of the bucket")

    async def remove_stale_temp_files(self) -> int:
        """Temp objects and incomplete multipart uploads under <prefix>tmp/ older than an
        hour: what uploads that a crash interrupted left behind."""
        cutoff = time.time() - STALE_SECONDS
        stale = [
            meta["path"]
            async for meta in self._list(f"{self.prefix}tmp/")
            if meta["last_modified"].timestamp() < cutoff
        ]
        for key in stale:
            await self.call(self.delete_key(key))
        removed = len(stale)
        for key, upload_id, initiated in await self.incomplete_uploads():
            if initiated < cutoff:
                answer = await self._signed("DELETE", key, {"uploadId": upload_id})
                if answer.code in (204, 404):  # 404: aborted meanwhile, by its own upload
                    removed += 1
                else:
                    log.warning("could not abort upload %s of %s: %d", upload_id, key, answer.code)
        for folder in self.copies_dir.parent.glob("s3-copies-*"):
            if folder != self.copies_dir and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        return removed

    async def incomplete_uploads(self) -> list[tuple[str, str, float]]:
        """(key, upload id, initiated at) of every multipart upload under <prefix>tmp/."""
        found: list[tuple[str, str, float]] = []
        query = {"uploads": "", "prefix": f"{self.prefix}tmp/"}
        while True:
            answer = await self._signed("GET", "", query)
            if answer.code != 200:
                raise StoreUnavailable(f"S3 answered {answer.code} to a list of uploads")
            root = ET.fromstring(answer.body)
            ns = root.tag.partition("}")[0] + "}" if root.tag.startswith("{") else ""
            for upload in root.iter(f"{ns}Upload"):
                initiated = upload.findtext(f"{ns}Initiated") or ""
                at = datetime.datetime.fromisoformat(initiated.replace("Z", "+00:00"))
                found.append(
                    (
                        upload.findtext(f"{ns}Key") or "",
                        upload.findtext(f"{ns}UploadId") or "",
                        at.timestamp(),
                    )
                )
            if root.findtext(f"{ns}IsTruncated") != "true":
                return found
            query = {
                **query,
                "key-marker": root.findtext(f"{ns}NextKeyMarker") or "",
                "upload-id-marker": root.findtext(f"{ns}NextUploadIdMarker") or "",
            }

    def close(self) -> None:
        shutil.rmtree(self.copies_dir, ignore_errors=True)
        self._http.close()

    async def _signed(
        self, method: str, key: str, query: dict[str, str] | None = None
    ) -> tornado.httpclient.HTTPResponse:
        """One SigV4-signed request to the bucket (or a key in it). Raises StoreUnavailable
        when the endpoint cannot be reached."""
        url, headers = sign_request(self.settings, method, key, query or {})
        try:
            return await self._http.fetch(
                url,
                method=method,
                headers=headers,
                raise_error=False,
                connect_timeout=5,
                request_timeout=30,
                allow_nonstandard_methods=True,
            )
        except OSError as exc:
            raise StoreUnavailable(f"cannot reach S3 at {self.settings.base_url}: {exc}") from None


def unavailable(exc: BaseException) -> StoreUnavailable:
    """obstore's error as ours: its first line, which names the request and the cause."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StoreUnavailable(f"the S3 storage failed: {first[:300]}")


# -- AWS Signature Version 4, for the requests obstore does not make


def _quote(text: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(text, safe=safe)


def _signing_key(secret: str, day: str, region: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _canonical(
    settings: S3Settings, method: str, key: str, query: dict[str, str], headers: dict[str, str]
) -> tuple[str, str, str]:
    """(url, canonical request, signed header names)."""
    base = urllib.parse.urlsplit(settings.base_url)
    path = base.path + "/" + _quote(key, safe="-_.~/")
    canonical_query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))
    names = sorted(name.lower() for name in headers)
    lowered = {name.lower(): value.strip() for name, value in headers.items()}
    canonical_headers = "".join(f"{name}:{lowered[name]}\n" for name in names)
    signed = ";".join(names)
    payload = lowered.get("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
    request = "\n".join([method, path, canonical_query, canonical_headers, signed, payload])
    url = f"{base.scheme}://{base.netloc}{path}" + (
        f"?{canonical_query}" if canonical_query else ""
    )
    return url, request, signed


def _string_to_sign(settings: S3Settings, stamp: str, request: str) -> tuple[str, str]:
    scope = f"{stamp[:8]}/{settings.region}/s3/aws4_request"
    digest = hashlib.sha256(request.encode()).hexdigest()
    return f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{digest}", scope


def sign_request(
    settings: S3Settings, method: str, key: str, query: dict[str, str]
) -> tuple[str, dict[str, str]]:
    """The URL and headers of a signed request without a body."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    headers = {
        "Host": urllib.parse.urlsplit(settings.base_url).netloc,
        "X-Amz-Date": stamp,
        "X-Amz-Content-Sha256": EMPTY_SHA256,
    }
    url, request, signed = _canonical(settings, method, key, query, headers)
    to_sign, scope = _string_to_sign(settings, stamp, request)
    signature = hmac.new(
        _signing_key(settings.secret_key, stamp[:8], settings.region),
        to_sign.encode(),
        hashlib.sha256,
    ).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={settings.access_key}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return url, headers


def presign(settings: S3Settings, key: str, extra: dict[str, str], seconds: int) -> str:
    """A presigned GET URL for `key`, with `extra` query parameters (response-*) signed in."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    scope = f"{stamp[:8]}/{settings.region}/s3/aws4_request"
    query = {
        **extra,
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{settings.access_key}/{scope}",
        "X-Amz-Date": stamp,
        "X-Amz-Expires": str(seconds),
        "X-Amz-SignedHeaders": "host",
    }
    headers = {"Host": urllib.parse.urlsplit(settings.base_url).netloc}
    url, request, _ = _canonical(settings, "GET", key, query, headers)
    to_sign, _ = _string_to_sign(settings, stamp, request)
    signature = hmac.new(
        _signing_key(settings.secret_key, stamp[:8], settings.region),
        to_sign.encode(),
        hashlib.sha256,
    ).hexdigest()
    return f"{url}&X-Amz-Signature={signature}"


def s3_store(config: Config, environ: Mapping[str, str] = os.environ) -> S3BlobStore:
    """The store [storage.s3] describes; the keys from their files, else the environment."""
    try:
        import obstore  # noqa: F401
    except ImportError:
        raise ConfigError(
            "storage.backend = \"s3\" needs obstore: pip install 'hostd[s3]'"
        ) from None
    if config.s3_bucket is None:
        # load_config checks this for storage.backend = "s3", not for the other store that
        # `hostd storage migrate` opens.
        raise ConfigError(
            'the S3 store needs a [storage.s3] section with at least bucket = "..."'
            " (and endpoint, unless it is AWS; see hostd.toml)"
        )
    settings = S3Settings(
        bucket=config.s3_bucket,
        access_key=_secret(
            config.s3_access_key_file, "AWS_ACCESS_KEY_ID", "access_key_file", environ
        ),
        secret_key=_secret(
            config.s3_secret_key_file, "AWS_SECRET_ACCESS_KEY", "secret_key_file", environ
        ),
        endpoint=config.s3_endpoint,
        region=config.s3_region,
        prefix=config.s3_prefix,
        path_style=config.s3_path_style,
        redirect=config.s3_redirect,
    )
    config.data_dir.mkdir(parents=True, exist_ok=True)
    return S3BlobStore(settings, config.data_dir / "tmp")


def _secret(path: Path | None, variable: str, key: str, environ: Mapping[str, str]) -> str:
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"storage.s3.{key}: {exc}") from None
    value = environ.get(variable)
    if not value:
        raise ConfigError(f"S3 credentials: set {variable}, or storage.s3.{key}")
    return value
