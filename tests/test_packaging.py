"""The wheel, as a VPS installs it: built, put in a fresh venv, and serving from there.

Every other test imports hostd from the checkout, where templates/ and static/ sit beside the
package; a wheel that left them (or a migration) out would pass them all and fail on the first
real install. So this builds the wheel from a copy of the sources (a build in place would write
build/ and *.egg-info into the checkout), checks that it holds every file hostd ships and
nothing outside the package, installs it into a new venv and runs that venv's `hostd serve`:
a page (templates), a static file, and an upload and its download (migrations).

The wheel is built as pip builds it for anyone, in an isolated environment with the setuptools
that pyproject's [build-system] asks for (from pip's cache or the index). Then it is
installed with --no-deps, offline: the new venv finds hostd's dependencies in this test's own
environment through a .pth line, which adds that directory after the venv's own
site-packages and runs none of the .pth files in it, so the editable hostd there stays out
of sight (a test checks which hostd the venv imports).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import fetch, multipart_body

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "README.md", "hostd", "templates", "static"]
# Where each shipped directory of the checkout lies inside the installed package.
SHIPPED = {"hostd": "hostd", "templates": "hostd/templates", "static": "hostd/static"}


def run(*args: str | Path, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{' '.join(map(str, args))}:\n{done.stdout}{done.stderr}"
    return done.stdout


def shipped_files() -> set[str]:
    """Every file of hostd/, templates/ and static/, as named inside the wheel."""
    names = set()
    for directory, inside in SHIPPED.items():
        for path in (ROOT / directory).rglob("*"):
            relative = path.relative_to(ROOT / directory)
            hidden = any(part.startswith(".") or part == "__pycache__" for part in relative.parts)
            if path.is_file() and not hidden:
                names.add(f"{inside}/{relative.as_posix()}")
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", ".*")
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    build = ["wheel", "--quiet", "--no-deps"]
    run(sys.executable, "-m", "pip", *build, "--wheel-dir", out, source)
    (built,) = out.glob("hostd-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with the wheel installed; returns the venv's directory."""
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / "bin" / "python"
    install = ["install", "--quiet", "--no-deps", "--no-index"]
    run(sys.executable, "-m", "pip", "--python", python, *install, wheel)
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site_packages = Path(run(python, "-c", purelib).strip())
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site_packages / "zz_test_dependencies.pth").write_text("\n".join(ours) + "\n")
    return root


@pytest.fixture
def served(installed: Path, tmp_path: Path, free_port: int) -> Iterator[str]:
    """The venv's `hostd serve` on a free port, with a new data dir; yields its base URL."""
    log = tmp_path / "hostd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [installed / "bin" / "hostd", "serve", "--data-dir", tmp_path / "data"]
            + ["--port", str(free_port)],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{free_port}"
    try:
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{base_url}/", timeout=5).close()
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        assert proc.poll() is None, f"hostd exited:\n{log.read_text()}"
        yield base_url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_wheel_holds_every_shipped_file_and_nothing_outside_the_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())

    missing = shipped_files() - names
    stray = [n for n in names if not n.startswith("hostd/") and ".dist-info/" not in n]

    assert not missing, f"not in the wheel (pyproject's packages / package-data): {missing}"
    assert not stray
    assert {"hostd/templates/base.html", "hostd/static/hostd.css"} <= names
    assert any(re.fullmatch(r"hostd/migrations/\d{4}_\w+\.sql", n) for n in names)


def test_the_venv_imports_hostd_from_the_wheel_not_the_checkout(installed, tmp_path):
    python = installed / "bin" / "python"
    where = run(python, "-c", "import hostd; print(hostd.__file__)", cwd=tmp_path)

    assert Path(where.strip()).is_relative_to(installed)


def test_an_installed_hostd_serves_its_pages_static_files_and_uploads(served):
    status, page = fetch(f"{served}/")
    stylesheet = re.search(rb'href="(/static/hostd\.css[^"]*)"', page)
    assert status == 200
    assert stylesheet, page[:500]

    status, css = fetch(served + stylesheet.group(1).decode())
    assert status == 200
    assert css == (ROOT / "static" / "hostd.css").read_bytes()

    data = b"round trip through an installed wheel\n"
    body, headers = multipart_body(files=[("file", "wheel.txt", data)])
    request = urllib.request.Request(f"{served}/api/upload", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["status"] is True

    assert fetch(f"{served}/{answer['hash']}") == (200, data)
