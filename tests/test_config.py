"""Loading hostd.toml: defaults, every key, and errors that name the key."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hostd.config import Config, ConfigError, ensure_cookie_secret, load_config, start_warnings

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hostd.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    config = load_config(None)

    assert config.host == "127.0.0.1"
    assert config.port == 8000
    assert config.public_url is None
    assert config.trust_proxy is False
    assert config.data_dir == Path("data")
    assert config.max_upload_bytes == 512 * 1024 * 1024


def test_the_shipped_hostd_toml_states_the_defaults():
    assert load_config(REPO / "hostd.toml") == load_config(None)


def test_every_key_is_read(tmp_path):
    path = write(
        tmp_path,
        """
        [server]
        host = "0.0.0.0"
        port = 9000
        public_url = "https://files.example.org/"
        trust_proxy = true
        shutdown_grace_seconds = 7.5
        [storage]
        data_dir = "/srv/hostd"
        [limits]
        max_upload_bytes = 1024
        allow_anonymous = false
        body_idle_seconds = 30
        send_idle_seconds = 45
        uploads_in_flight_per_address = 2
        max_thumbnail_decode_bytes = 2048
        [accounts]
        registration = "closed"
        max_keys = 3
        """,
    )

    config = load_config(path)

    assert config == Config(
        host="0.0.0.0",
        port=9000,
        public_url="https://files.example.org",
        trust_proxy=True,
        shutdown_grace_seconds=7.5,
        data_dir=Path("/srv/hostd"),
        max_upload_bytes=1024,
        allow_anonymous=False,
        body_idle_seconds=30.0,
        send_idle_seconds=45.0,
        uploads_in_flight_per_address=2,
        max_thumbnail_decode_bytes=2048,
        registration="closed",
        max_keys=3,
    )


def test_command_line_overrides_win(tmp_path):
    path = write(tmp_path, "[server]\nport = 9000\n")

    config = load_config(path, {"port": 9100, "host": None})

    assert config.port == 9100
    assert config.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nhots = 'x'\n", "unknown key server.hots"),
        ("[srever]\nhost = 'x'\n", "unknown section [srever]"),
        ("[server]\nport = '8000'\n", "server.port must be int, not str '8000'"),
        ("[server]\nport = true\n", "server.port must be int"),
        ("[server]\nport = 70000\n", "server.port must be between 1 and 65535"),
        ("[limits]\nmax_upload_bytes = 0\n", "limits.max_upload_bytes must be a positive"),
        ("[limits]\nallow_anonymous = 'no'\n", "limits.allow_anonymous must be bool"),
        ("[limits]\nbody_idle_seconds = 0\n", "limits.body_idle_seconds must be between"),
        ("[limits]\nbody_idle_seconds = '60'\n", "limits.body_idle_seconds must be a number"),
        ("[limits]\nbody_idle_seconds = nan\n", "limits.body_idle_seconds must be between"),
        ("[limits]\nsend_idle_seconds = 0\n", "limits.send_idle_seconds must be between"),
        ("[limits]\nuploads_in_flight_per_address = 0\n", "must be at least 1"),
        ("[server]\nshutdown_grace_seconds = -1\n", "server.shutdown_grace_seconds must be"),
        ("[server]\ncpu = 'fast'\n", 'server.cpu must be "auto", "any" or a CPU\'s number'),
        ("[server]\ncpu = -1\n", "server.cpu must be a CPU's number (0 or more), not -1"),
        ("[server]\ncpu = true\n", "server.cpu must be str or int, not bool True"),
        ("[storage]\nbackend = 'ftp'\n", "storage.backend must be 'local' or 's3'"),
        ("[storage]\nbackend = 's3'\n", 'storage.backend = "s3" needs storage.s3.bucket'),
        ("[storage.s3]\nbukcet = 'x'\n", "unknown key storage.s3.bukcet (known: endpoint,"),
        ("[storage.s3]\npath_style = 'yes'\n", "storage.s3.path_style must be bool"),
        ("[storage.s3]\nendpoint = 'localhost:9000'\n", "storage.s3.endpoint must start with"),
        (
            "[limits]\nmax_thumbnail_decode_bytes = 0\n",
            "limits.max_thumbnail_decode_bytes must be a positive",
        ),
        (
            "[accounts]\nregistration = 'invite'\n",
            "accounts.registration must be 'open' or 'closed'",
        ),
        ("[accounts]\nregistrations_per_hour = 0\n", "accounts.registrations_per_hour must be"),
        ("[server]\npublic_url = 'files.example.org'\n", "server.public_url must start with"),
        (
            "[limits]\nmax_upload_bytes = 99999999999999999999999\n",
            "limits.max_upload_bytes must be a number of at most 9,007,199,254,740,992, not 9999",
        ),
        ("[limits]\nbody_idle_seconds = inf\n", "limits.body_idle_seconds must be a number of at"),
        ("port = 1\n", "unknown section [port]"),
        ("[server\n", "hostd.toml"),
    ],
)
def test_mistakes_stop_the_start_and_name_the_key(tmp_path, text, message):
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert message in str(caught.value)


def test_metrics_are_off_and_loopback_only_by_default_and_read_from_their_section(tmp_path):
    path = write(
        tmp_path, '[metrics]\nenabled = true\nallow = ["10.0.0.0/8", "192.0.2.7", "fd00::/8"]\n'
    )

    config = load_config(path)

    assert (load_config(None).metrics_enabled, load_config(None).metrics_allow) == (
        False,
        ("127.0.0.0/8", "::1"),
    )
    assert config.metrics_enabled is True
    assert config.metrics_allow == ("10.0.0.0/8", "192.0.2.7", "fd00::/8")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[metrics]\nenabled = 1\n", "metrics.enabled must be bool"),
        ("[metrics]\nmetrics_enabled = true\n", "unknown key metrics.metrics_enabled"),
        ("[metrics]\nallow = '127.0.0.1'\n", "metrics.allow must be a list of addresses"),
        ("[metrics]\nallow = ['localhost']\n", "metrics.allow: 'localhost' is not an address"),
        ("[metrics]\nallow = ['10.0.0.0/33']\n", "metrics.allow: '10.0.0.0/33' is not"),
    ],
)
def test_metrics_mistakes_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))

    assert message in str(caught.value)


def test_a_flag_does_not_hide_a_mistake_in_the_file(tmp_path):
    path = write(tmp_path, "[server]\nport = '80'\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, {"port": 9100})

    assert "server.port must be int, not str '80'" in str(caught.value)


@pytest.mark.parametrize("prefix", ["/_hostd_blobs/", "/internal/blobs/"])
def test_accel_redirect_takes_a_location_prefix(tmp_path, prefix):
    path = write(tmp_path, f'[server]\naccel_redirect = "{prefix}"\n')

    assert load_config(path).accel_redirect == prefix


@pytest.mark.parametrize("prefix", ["/_hostd_blobs", "_hostd_blobs/", "/", "/../", "/a b/", "@x"])
def test_accel_redirect_must_be_a_path_that_starts_and_ends_with_a_slash(tmp_path, prefix):
    path = write(tmp_path, f'[server]\naccel_redirect = "{prefix}"\n')

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert "server.accel_redirect must be a path that starts and ends with /" in str(caught.value)


def test_cookie_secret_is_generated_once_into_a_private_file(tmp_path):
    config = Config(data_dir=tmp_path)

    first = ensure_cookie_secret(config)
    second = ensure_cookie_secret(config)

    assert first.cookie_secret and len(first.cookie_secret) >= 32
    assert second.cookie_secret == first.cookie_secret
    assert stat.S_IMODE(os.stat(tmp_path / "cookie_secret").st_mode) == 0o600


def test_a_cookie_secret_that_cannot_be_read_or_made_stops_the_start_with_one_line(tmp_path):
    (tmp_path / "cookie_secret").mkdir()  # as root, a mode would not stop a read

    with pytest.raises(ConfigError) as caught:
        ensure_cookie_secret(Config(data_dir=tmp_path))

    assert str(caught.value) == f"cannot read or create {tmp_path}/cookie_secret: Is a directory"


def test_cookie_secret_from_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTD_COOKIE_SECRET", "from-env")

    config = ensure_cookie_secret(Config(data_dir=tmp_path))

    assert config.cookie_secret == "from-env"
    assert not (tmp_path / "cookie_secret").exists()


def test_database_keys_are_read_under_their_section(tmp_path):
    (tmp_path / "pw").write_text("s3cret\nignored\n")
    path = write(
        tmp_path,
        f"""
        [database]
        url = "postgresql://hostd@127.0.0.1:5432/hostd"
        password_file = "{tmp_path}/pw"
        """,
    )

    config = load_config(path)

    assert config.database == "postgresql://hostd@127.0.0.1:5432/hostd"
    assert config.database_password() == "s3cret"
    assert load_config(None, {"data_dir": tmp_path}).database == tmp_path / "hostd.sqlite3"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[database]\nurl = "mysql://x"\n', "database.url must be sqlite:///path or postgresql://"),
        ('[database]\ndatabase_url = "sqlite:///x"\n', "unknown key database.database_url"),
        ("[database]\nurl = 5\n", "database.url must be str"),
    ],
)
def test_a_wrong_database_key_is_named(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.7", "files.example.org"])
def test_trust_proxy_on_an_address_others_reach_is_one_warning_at_start(host):
    config = Config(host=host, trust_proxy=True)

    (warning,) = start_warnings(config)

    assert warning.startswith("trust_proxy is on and hostd listens on ")
    assert "any client that reaches it there can set X-Real-IP" in warning
    assert "X-Forwarded-Host" in warning and "listen on 127.0.0.1" in warning


@pytest.mark.parametrize(
    ("host", "trust_proxy"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
    ],
)
def test_trust_proxy_behind_a_proxy_on_loopback_or_off_says_nothing(host, trust_proxy):
    assert start_warnings(Config(host=host, trust_proxy=trust_proxy)) == []


def test_a_public_url_with_a_path_is_one_warning_that_pages_need_the_root(tmp_path):
    config = load_config(write(tmp_path, '[server]\npublic_url = "https://example.org/hostd/"\n'))

    (warning,) = start_warnings(config)

    assert warning.startswith("public_url has a path (/hostd): the API's URLs follow it,")
    assert "serve hostd at the root of its host" in warning


@pytest.mark.parametrize("url", ["https://files.example.org", "https://files.example.org/"])
def test_a_public_url_at_the_root_of_its_host_says_nothing(tmp_path, url):
    config = load_config(write(tmp_path, f'[server]\npublic_url = "{url}"\n'))

    assert start_warnings(config) == []
