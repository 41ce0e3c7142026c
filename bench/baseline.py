"""The yardstick for `make bench`: one bare Tornado process doing the least a file host must.

    python bench/baseline.py --port 8001 --data-dir /dev/shm/baseline

`PUT /upload/<name>` streams the body into a temp file (plain writes on the IOLoop as the
chunks arrive), then fsyncs it and renames it to `<data-dir>/files/<name>` in a worker
thread, so that the fsyncs of concurrent uploads overlap, and answers 201 with the name.
No multipart parsing, no hashing, no database, no directory fsync: what is left is Tornado's
HTTP handling and the kernel's file work, the floor under any upload hostd can do.

`GET /files/<name>` is tornado.web.StaticFileHandler over that directory: a stat, an open,
ETag, Range and 304, the way a bare Tornado app serves files.

bench/run.py starts this beside hostd in the same run and prints hostd's figures as ratios
to these, because absolute figures on a shared machine swing by a third from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import uuid
from pathlib import Path

import tornado.httpserver
import tornado.web
from tornado.http1connection import HTTP1Connection

MAX_BODY_BYTES = 4 * 1024**3
NAME_PATTERN = r"[A-Za-z0-9._-]+"


@tornado.web.stream_request_body
class PutHandler(tornado.web.RequestHandler):
    """PUT /upload/<name>: the body, as it arrives, into a temp file; then fsync and rename."""

    fd: int | None = None

    def prepare(self) -> None:
        connection = self.request.connection
        assert isinstance(connection, HTTP1Connection)
        connection.set_max_body_size(MAX_BODY_BYTES)
        self.temp = self.settings["tmp_dir"] / uuid.uuid4().hex
        self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def data_received(self, chunk: bytes) -> None:
        assert self.fd is not None
        os.write(self.fd, chunk)

    async def put(self, name: str) -> None:
        assert self.fd is not None
        fd, self.fd = self.fd, None
        final = self.settings["files_dir"] / name
        await asyncio.to_thread(self._fsync_and_rename, fd, final)
        self.set_status(201)
        self.finish(name + "\n")

    def _fsync_and_rename(self, fd: int, final: Path) -> None:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(self.temp, final)

    def on_connection_close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self.temp.unlink(missing_ok=True)


def make_app(data_dir: Path) -> tornado.web.Application:
    files_dir, tmp_dir = data_dir / "files", data_dir / "tmp"
    files_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    return tornado.web.Application(
        [
            (rf"/upload/({NAME_PATTERN})", PutHandler),
            (r"/files/(.*)", tornado.web.StaticFileHandler, {"path": str(files_dir)}),
        ],
        files_dir=files_dir,
        tmp_dir=tmp_dir,
    )


async def serve(port: int, data_dir: Path) -> None:
    # The same HTTPServer settings as hostd's make_server(): what differs is the work.
    server = tornado.httpserver.HTTPServer(
        make_app(data_dir),
        max_body_size=1024 * 1024,
        max_buffer_size=1024 * 1024,
        chunk_size=256 * 1024,
        idle_connection_timeout=120,
    )
    server.listen(port, address="127.0.0.1")
    print(f"baseline listening on http://127.0.0.1:{port}/ (data in {data_dir})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.stop()
    await server.close_all_connections()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.data_dir))


if __name__ == "__main__":
    main()
