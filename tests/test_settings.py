"""Settings: flag > environment > sluice.toml > default, casts, errors that name the option."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.errors import ConfigurationError
from core.options import walk
from core.settings import (
    HostPort,
    Route,
    Secret,
    Settings,
    SubmissionSettings,
    TrackingSettings,
    WarmupSettings,
    WebhookSettings,
    load_settings,
    options,
)

TOML = """
workers = 3
relay = "toml-relay.example:2525"
listen = "127.0.0.3:8003"
max_deferral = "2h"
retry_schedule = "10s,20s"
drain_timeout = "7s"
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Run from an empty dir so no stray ./sluice.toml is picked up.
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "conf" / "sluice.toml"
    path.parent.mkdir()
    path.write_text(TOML)
    return path


def load(flags: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Any:
    return load_settings({"ehlo_name": "mta.test", **(flags or {})}, env=env or {})


def test_flag_beats_env_beats_toml_beats_default(config: Path) -> None:
    flags = {"config": str(config), "workers": "7", "relay": "flag-relay.example:25"}
    env = {"SLUICE_WORKERS": "5", "SLUICE_RELAY": "env-relay.example:26"}

    everything = load(flags, env)
    assert everything.config_path == config
    assert everything.delivery.workers == 7
    assert everything.delivery.relay == HostPort("flag-relay.example", 25)

    no_flags = load({"config": str(config)}, env)
    assert no_flags.delivery.workers == 5
    assert no_flags.delivery.relay == HostPort("env-relay.example", 26)

    toml_only = load({"config": str(config)})
    assert toml_only.delivery.workers == 3
    assert toml_only.delivery.relay == HostPort("toml-relay.example", 2525)
    assert toml_only.http.listen == HostPort("127.0.0.3", 8003)
    assert toml_only.http.public_url == "http://127.0.0.3:8003"
    assert toml_only.delivery.drain_timeout == 7.0

    defaults = load()
    assert defaults.config_path is None
    assert defaults.delivery.workers == (os.cpu_count() or 1)
    assert defaults.delivery.relay is None
    assert defaults.http.listen == HostPort("127.0.0.1", 8025)
    assert defaults.redis.url is None
    assert defaults.delivery.max_deferral == 72 * 3600
    assert defaults.delivery.retry_schedule == (60, 300, 900, 1800, 3600, 7200, 14400)
    assert defaults.delivery.drain_timeout == 30.0
    assert defaults.data_dir == (config.parent.parent / "sluice-data").resolve()


def test_empty_values_fall_through_to_the_next_source(config: Path) -> None:
    settings = load({"config": str(config), "workers": ""}, {"SLUICE_WORKERS": ""})
    assert settings.delivery.workers == 3


def test_config_file_named_by_environment_and_found_in_cwd(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load(env={"SLUICE_CONFIG": str(config)}).delivery.workers == 3
    monkeypatch.chdir(config.parent)
    found = load()
    assert found.config_path == Path("sluice.toml")
    assert found.delivery.workers == 3


def test_durations_and_schedules(config: Path) -> None:
    settings = load(
        {"config": str(config)},
        {
            "SLUICE_RETRY_SCHEDULE": "1s,2s,4s",
            "SLUICE_MAX_DEFERRAL": "72h",
            "SLUICE_SMTP_TIMEOUT": "250ms",
            "SLUICE_DRAIN_TIMEOUT": "90",
        },
    )
    assert settings.delivery.retry_schedule == (1.0, 2.0, 4.0)
    assert settings.delivery.max_deferral == 259_200.0
    assert settings.delivery.smtp_timeout == pytest.approx(0.25)
    assert settings.delivery.drain_timeout == 90.0

    from_toml = load({"config": str(config)})
    assert from_toml.delivery.retry_schedule == (10.0, 20.0)
    assert from_toml.delivery.max_deferral == 7200.0

    spaced = load(env={"SLUICE_RETRY_SCHEDULE": " 5m , 1d ,", "SLUICE_MAX_DEFERRAL": "1.5h"})
    assert spaced.delivery.retry_schedule == (300.0, 86_400.0)
    assert spaced.delivery.max_deferral == 5400.0


@pytest.mark.parametrize(
    ("flags", "env", "named"),
    [
        ({}, {"SLUICE_WORKERS": "many"}, "SLUICE_WORKERS"),
        ({}, {"SLUICE_WORKERS": "-1"}, "SLUICE_WORKERS"),
        ({"workers": "two"}, {}, "--workers"),
        ({}, {"SLUICE_MAX_DEFERRAL": "3 fortnights"}, "SLUICE_MAX_DEFERRAL"),
        ({}, {"SLUICE_RETRY_SCHEDULE": ","}, "SLUICE_RETRY_SCHEDULE"),
        ({}, {"SLUICE_RETRY_SCHEDULE": "1s,soon"}, "SLUICE_RETRY_SCHEDULE"),
        ({}, {"SLUICE_LISTEN": "localhost"}, "SLUICE_LISTEN"),
        ({}, {"SLUICE_LISTEN": "127.0.0.1:99999"}, "SLUICE_LISTEN"),
        ({"public_url": "ftp://example.com"}, {}, "--public-url"),
        ({"max_body_bytes": "0"}, {}, "--max-body-bytes"),
        ({}, {"SLUICE_CONCURRENCY_PER_WORKER": "0"}, "SLUICE_CONCURRENCY_PER_WORKER"),
    ],
)
def test_bad_values_name_the_option(
    config: Path, flags: dict[str, str], env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        load(flags, env)


def test_bad_value_in_the_config_file_names_the_key(config: Path) -> None:
    config.write_text('workers = "lots"\n')
    with pytest.raises(ConfigurationError, match=r"workers in sluice\.toml"):
        load({"config": str(config)})


def test_missing_or_broken_config_file(config: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load({"config": str(config.parent / "nope.toml")})
    config.write_text("workers = = 3\n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load({"config": str(config)})


def test_secret_never_shows_in_repr(config: Path) -> None:
    value = "sk_super-secret-value-42"
    settings = load(env={"SLUICE_API_KEY": value})
    assert settings.api_key is not None
    assert settings.api_key.reveal() == value
    for shown in (repr(settings), str(settings), repr(settings.api_key), f"{settings.api_key}"):
        assert value not in shown
    assert "**********" in repr(settings)
    # Workers get their settings by pickling: the key must survive that.
    assert pickle.loads(pickle.dumps(settings)).api_key == Secret(value)
    assert load().api_key is None


def test_pool_names_follow_the_rule_every_other_name_follows(config: Path) -> None:
    ips = load(env={"SLUICE_IPS": "192.0.2.10@warm.v2, 192.0.2.11=mta2.example.com"}).delivery.ips
    assert [(ip.ip, ip.pool, ip.ehlo_name) for ip in ips] == [
        ("192.0.2.10", "warm.v2", None),
        ("192.0.2.11", "default", "mta2.example.com"),
    ]
    with pytest.raises(
        ConfigurationError, match=r"SLUICE_IPS is invalid: pool '-warm' must be 1-64"
    ):
        load(env={"SLUICE_IPS": "192.0.2.10@-warm"})


# --- unknown names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'relai = "relay.example:25"',
            "Config relai in sluice.toml is not a known option; did you mean relay?",
        ),
        ("warmup_max_deferal_rate = 0.2", "did you mean warmup_max_deferral_rate?"),
        ('colour = "blue"', "Config colour in sluice.toml is not a known option"),
        ('config = "other.toml"', "not read from the file; use --config or SLUICE_CONFIG"),
        ("[warmup]\nmax_deferral_rate = 0.2", "flat keys, such as warmup_max_deferral_rate"),
        (
            '[transport]\n"*" = "mx"\nworkers = 3',
            "transport.workers in sluice.toml is an option, not a domain",
        ),
        (
            '[transport]\n"*.example.com" = "mx"',
            "transport.*.example.com in sluice.toml is not a domain",
        ),
        ("transport = 3", "Config [transport] in sluice.toml must be a table"),
    ],
)
def test_unknown_keys_in_the_config_file_are_refused_with_the_nearest_name(
    config: Path, text: str, message: str
) -> None:
    config.write_text(f"workers = 3\n{text}\n")
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        load({"config": str(config)})


def test_no_near_name_no_guess(config: Path) -> None:
    config.write_text('colour = "blue"\n')
    with pytest.raises(ConfigurationError) as caught:
        load({"config": str(config)})
    assert "did you mean" not in str(caught.value)


def test_unknown_environment_variable_is_logged_with_the_nearest_name(
    config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load(env={"SLUICE_RELAI": "relay.example:25", "SLUICE_WORKERS": "2"})
    assert settings.delivery.relay is None  # not misread as SLUICE_RELAY
    assert settings.delivery.workers == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "SLUICE_RELAI is not a Sluice setting and is ignored; did you mean SLUICE_RELAY?"
    ]


def test_a_flag_that_is_no_option_is_a_programming_error(config: Path) -> None:
    with pytest.raises(TypeError, match="relai"):
        load({"relai": "relay.example:25"})


def test_transport_table_most_specific_first_and_relay_wins_the_catch_all(config: Path) -> None:
    config.write_text(
        "workers = 1\n"
        "[transport]\n"
        '"*" = "relay smarthost.example:2525"\n'
        '".internal.example" = "relay 10.0.0.25:25"\n'
        '"partner.example" = "relay smtp.partner.example:587 tls=required"\n'
        '"mx.example" = "mx"\n'
    )
    routes = load({"config": str(config)}).delivery.routes
    assert [(r.domain, r.kind, r.relay, r.require_tls) for r in routes] == [
        (".internal.example", "relay", HostPort("10.0.0.25", 25), False),
        ("partner.example", "relay", HostPort("smtp.partner.example", 587), True),
        ("mx.example", "mx", None, False),
        ("*", "relay", HostPort("smarthost.example", 2525), False),
    ]
    relayed = load({"config": str(config)}, {"SLUICE_RELAY": "other.example tls=required"})
    assert relayed.delivery.routes[-1] == Route(
        "*", "relay", HostPort("other.example", 25), require_tls=True
    )
    assert relayed.delivery.relay == HostPort("other.example", 25)
    assert len(relayed.delivery.routes) == 4


# --- declared once ------------------------------------------------------------------------


def _leaves(tree: Any) -> Iterator[tuple[dataclasses.Field[Any], Any]]:
    for each in dataclasses.fields(tree):
        value = getattr(tree, each.name)
        if "section" in each.metadata:
            yield from _leaves(value)
        else:
            yield each, value


def _option_fields() -> list[dataclasses.Field[Any]]:
    return [each for each in walk(Settings) if "option" in each.metadata]


def test_every_default_is_read_from_its_dataclass_field(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Change every field's default and ``load_settings`` follows: no second copy anywhere."""
    replaced = {}
    for each in _option_fields():
        if each.default is not dataclasses.MISSING:
            replaced[each] = object()
            monkeypatch.setattr(each, "default", replaced[each])
    assert len(replaced) > 30
    loaded = dict(_leaves(load()))
    for each, sentinel in replaced.items():
        assert loaded[each] is sentinel, each.name


def test_an_empty_load_is_the_dataclass_defaults_and_documented_defaults_parse_to_them(
    config: Path,
) -> None:
    settings = load()
    assert settings.tracking == TrackingSettings()
    assert settings.webhooks == WebhookSettings()
    assert settings.warmup == WarmupSettings()
    assert settings.submission == SubmissionSettings()
    shown = {doc.key: doc.default for doc in options()}
    for each in _option_fields():
        declared = each.metadata["option"]
        if each.default not in (dataclasses.MISSING, None, ()):
            assert declared.cast(shown[declared.key]) == each.default, declared.key


def test_each_option_is_declared_once(config: Path) -> None:
    keys = [doc.key for doc in options()]
    assert len(keys) == len(set(keys)) == len(_option_fields())
    assert len(keys) >= 45


def test_derived_defaults(config: Path) -> None:
    settings = load_settings({"data_dir": "d"}, env={"SLUICE_LISTEN": "127.0.0.9:9000"})
    assert settings.http.public_url == "http://127.0.0.9:9000"
    assert settings.delivery.ehlo_name == (socket.getfqdn() or "localhost")
    assert settings.data_dir == (config.parent.parent / "d").resolve()


README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_configuration_rows() -> dict[str, str]:
    """``SLUICE_X`` -> the flag cell of its row in README's Configuration table."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and line.endswith(" |"):
            flag, env = (cell.strip() for cell in line.split("|")[1:3])
            for name in re.findall(r"SLUICE_[A-Z0-9_]+", env):
                rows[name] = flag
    return rows


def test_readme_configuration_table_matches_the_options() -> None:
    rows = _readme_configuration_rows()
    documented = {doc.env: doc for doc in options()}
    assert sorted(set(documented) - set(rows)) == [], "options missing from README's table"
    assert sorted(set(rows) - set(documented)) == [], "README's table names no such option"
    for env, doc in documented.items():
        expected = f"`{doc.flag} {doc.metavar}`" if doc.flag else ""
        assert rows[env] == expected, env
