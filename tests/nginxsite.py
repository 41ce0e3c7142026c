"""contrib/nginx.conf, read and adapted to run on loopback: for the tests and the bench.

The tests and `make bench` run nginx with the example site we ship, changed only where a
loopback run must differ (the upstream's servers, the `listen` lines, the ssl_* lines, the
blob directory), so that what they exercise is what an admin copies.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CONTRIB = Path(__file__).resolve().parent.parent / "contrib" / "nginx.conf"
INSTALL_HINT = "apt-get install nginx-light"

TOKEN = re.compile(r"""#[^\n]*|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[{};]|[^\s{};#"']+""")


class SiteError(ValueError):
    """contrib/nginx.conf is not shaped as the adaptation expects."""


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None


def parse_nginx(text: str) -> list[Directive]:
    """nginx's configuration syntax, enough for our example: directives, blocks, quoting."""
    stack: list[list[Directive]] = [[]]
    words: list[str] = []
    for token in TOKEN.findall(text):
        if token.startswith("#"):
            continue
        if token == ";":
            stack[-1].append(Directive(words[0], words[1:]))
            words = []
        elif token == "{":
            inner: list[Directive] = []
            stack[-1].append(Directive(words[0], words[1:], inner))
            stack.append(inner)
            words = []
        elif token == "}":
            if len(stack) == 1 or words:
                raise SiteError("contrib/nginx.conf: an unbalanced }")
            stack.pop()
        else:
            words.append(token)
    if len(stack) != 1 or words:
        raise SiteError("contrib/nginx.conf: an unterminated block or directive")
    return stack[0]


def render_nginx(directives: list[Directive], depth: int = 0) -> str:
    pad = "    " * depth
    lines = []
    for d in directives:
        head = " ".join([d.name, *d.args])
        if d.block is None:
            lines.append(f"{pad}{head};")
        else:
            lines += [f"{pad}{head} {{", render_nginx(d.block, depth + 1), f"{pad}}}"]
    return "\n".join(lines)


def walk(directives: list[Directive]) -> Iterator[Directive]:
    for d in directives:
        yield d
        if d.block:
            yield from walk(d.block)


def only(items: list[Directive], what: str) -> Directive:
    if len(items) != 1:
        raise SiteError(f"contrib/nginx.conf should have exactly one {what}")
    return items[0]


@dataclass
class Site:
    """contrib/nginx.conf's three parts, each a copy the caller may change."""

    upstream: Directive
    tls: Directive  # the server block hostd runs behind
    redirect: Directive  # the port-80 block that only redirects

    def internal_location(self) -> Directive | None:
        """The `internal` location that serves blobs for server.accel_redirect."""
        found = [
            d
            for d in walk(self.tls.block or [])
            if d.name == "location" and any(x.name == "internal" for x in d.block or [])
        ]
        return found[0] if found else None


def contrib_site() -> Site:
    top = parse_nginx(CONTRIB.read_text(encoding="utf-8"))
    upstream = only([d for d in top if d.name == "upstream"], "upstream block")
    servers = [d for d in top if d.name == "server"]
    tls = only(
        [s for s in servers if any(d.name == "ssl_certificate" for d in walk(s.block or []))],
        "TLS server block",
    )
    redirect = only([s for s in servers if s is not tls], "port 80 server block")
    return Site(copy.deepcopy(upstream), copy.deepcopy(tls), copy.deepcopy(redirect))


def upstream_to(upstream: Directive, ports: list[int], name: str | None = None) -> Directive:
    """A copy of the upstream block whose one `server` line becomes one per port."""
    upstream = copy.deepcopy(upstream)
    block = upstream.block or []
    template = only([d for d in block if d.name == "server"], "server line in the upstream")
    at = block.index(template)
    servers = [Directive("server", [f"127.0.0.1:{port}", *template.args[1:]]) for port in ports]
    upstream.block = [*block[:at], *servers, *block[at + 1 :]]
    if name is not None:
        upstream.args = [name]
    return upstream


def listening_on(server: Directive, port: int, blobs_dir: Path | None = None) -> Directive:
    """A copy of a server block on a loopback port, in plain HTTP; with `blobs_dir`, its
    internal blob location aliased there."""
    server = copy.deepcopy(server)
    kept = [d for d in server.block or [] if d.name != "listen" and not d.name.startswith("ssl_")]
    server.block = [Directive("listen", [f"127.0.0.1:{port}"]), *kept]
    if blobs_dir is not None:
        for d in walk(server.block):
            if d.name == "location" and any(x.name == "internal" for x in d.block or []):
                d.block = [x for x in d.block or [] if x.name not in ("alias", "root")]
                d.block.append(Directive("alias", [f"{blobs_dir}/"]))
    return server


def proxy_to(server: Directive, old: str, new: str) -> None:
    """Point a server block's proxy_pass lines at upstream `new` instead of `old`."""
    for d in walk(server.block or []):
        if d.name == "proxy_pass":
            d.args[0] = d.args[0].replace(f"//{old}", f"//{new}", 1)


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (
            path
            for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
            if os.access(path, os.X_OK)
        ),
        None,
    )


def nginx_conf(binary: str, prefix: Path, site: str, http_extra: str = "") -> str:
    """A whole nginx.conf with Debian's stock http settings around `site`, whose every path
    is under `prefix`, so that it runs as any user without touching /etc or /var."""
    build = subprocess.run([binary, "-V"], capture_output=True, text=True).stderr
    temp_paths = "\n".join(
        f"    {module}_temp_path {prefix}/{module}_temp;"
        for module in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        if f"--without-http_{module}_module" not in build
    )
    # As root, nginx's workers would otherwise switch to `nobody`, who cannot enter prefix.
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""{user}
worker_processes auto;
pid {prefix}/nginx.pid;
lock_file {prefix}/nginx.lock;
error_log {prefix}/error.log;
events {{
    worker_connections 1024;
}}
http {{
    # As in Debian's stock /etc/nginx/nginx.conf.
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    default_type application/octet-stream;
    gzip on;
    access_log {prefix}/access.log;
{temp_paths}
{http_extra}
{site}
}}
"""


def nginx_argv(binary: str, prefix: Path) -> list[str]:
    return [binary, "-c", str(prefix / "nginx.conf"), "-p", str(prefix), "-g", "daemon off;"]
