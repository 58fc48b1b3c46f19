"""pipeline/config.py and ``ihub check``: strict validation, every problem named at once.

Each bad file is written to tmp_path and loaded for real; an error line reads
``file: dotted.key: what was expected``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from ihub.cli import main
from pipeline.config import HubConfig, load_config, masked, parse_config
from pipeline.errors import ConfigError

SECRET = "s3cr3t-client-value-42"
UNSET = "IHUB_TEST_SURELY_UNSET_VAR"
MASK = "**********"

BASE: dict[str, Any] = {
    "integrations": {
        "incidents": {
            "schedule": 60,
            "source": {
                "url": "https://api.example.com/incidents",
                "auth": {
                    "type": "oauth2",
                    "token_url": "https://auth.example.com/token",
                    "client_id": "ihub",
                    "client_secret": "${CLIENT_SECRET}",
                },
            },
            "sink": {"table": "incidents"},
        }
    }
}
ENV = {"CLIENT_SECRET": SECRET}


def variant(mutate: Callable[[dict[str, Any]], None]) -> str:
    """BASE with one change applied, as YAML text."""
    data = copy.deepcopy(BASE)
    mutate(data)
    return yaml.safe_dump(data, sort_keys=False)


def inc(data: dict[str, Any]) -> dict[str, Any]:
    return data["integrations"]["incidents"]


def _typo(d: dict[str, Any]) -> None:
    inc(d)["retry"] = {"max_retris": 3}


def _no_url(d: dict[str, Any]) -> None:
    del inc(d)["source"]["url"]


def _wrong_type(d: dict[str, Any]) -> None:
    inc(d)["retry"] = {"max_retries": "many"}


def _ftp(d: dict[str, Any]) -> None:
    inc(d)["source"]["url"] = "ftp://api.example.com/incidents"


def _unset_env(d: dict[str, Any]) -> None:
    inc(d)["source"]["auth"]["client_secret"] = "${" + UNSET + "}"


def _bad_name(d: dict[str, Any]) -> None:
    d["integrations"]["Incidents-1"] = d["integrations"].pop("incidents")


def _bad_cron(d: dict[str, Any]) -> None:
    inc(d)["schedule"] = "*/5 * * *"


def _password_no_user(d: dict[str, Any]) -> None:
    auth = inc(d)["source"]["auth"]
    auth.update(grant_type="password", password="pw-123456")


def _bad_table(d: dict[str, Any]) -> None:
    inc(d)["sink"]["table"] = "my-table"


def _limit_zero(d: dict[str, Any]) -> None:
    inc(d)["source"]["pagination"] = {"limit": 0}


# (id, mutation, dotted key, what was expected)
KEYED_CASES = [
    ("unknown_key", _typo, "integrations.incidents.retry.max_retris", "unknown key"),
    ("missing_url", _no_url, "integrations.incidents.source.url", "Field required"),
    ("wrong_type", _wrong_type, "integrations.incidents.retry.max_retries", "valid integer"),
    ("url_scheme", _ftp, "integrations.incidents.source.url", "http:// or https:// URL"),
    (
        "missing_env",
        _unset_env,
        "integrations.incidents.source.auth.client_secret",
        f"environment variable {UNSET} is not set",
    ),
    ("bad_name", _bad_name, "integrations.Incidents-1", "lowercase letters"),
    ("bad_cron", _bad_cron, "integrations.incidents.schedule", "5-field cron string"),
    (
        "password_no_user",
        _password_no_user,
        "integrations.incidents.source.auth",
        "needs 'username' and 'password'",
    ),
    ("bad_table", _bad_table, "integrations.incidents.sink.table", "SQL identifier"),
    (
        "limit_zero",
        _limit_zero,
        "integrations.incidents.source.pagination.limit",
        "greater than or equal to 1",
    ),
]


def write(tmp_path: Path, text: str, name: str = "integrations.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=ENV if env is None else env)
    return caught.value


def problem_line(error: ConfigError, path: Path, key: str) -> str:
    """The one line of the error text for ``key`` (exact key, not a longer one)."""
    prefix = f"{path}: {key}: "
    lines = [line.strip() for line in str(error).splitlines() if line.strip().startswith(prefix)]
    assert len(lines) == 1, f"expected one line for {key!r} in:\n{error}"
    return lines[0]


def test_base_config_is_valid(tmp_path: Path) -> None:
    """The fixture config every bad case is derived from loads cleanly."""
    config = load_config(write(tmp_path, variant(lambda d: None)), env=ENV)
    assert isinstance(config, HubConfig)
    assert config.get("incidents").source.url == "https://api.example.com/incidents"
    assert config.source_file == str(tmp_path / "integrations.yaml")


@pytest.mark.parametrize(
    ("mutate", "key", "expected"),
    [case[1:] for case in KEYED_CASES],
    ids=[case[0] for case in KEYED_CASES],
)
def test_bad_config_names_file_key_and_expectation(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], key: str, expected: str
) -> None:
    """One fault gives exactly one problem line: file, dotted key, what was expected."""
    path = write(tmp_path, variant(mutate))
    error = config_error(path)
    assert str(error).startswith(f"{path}: ")
    assert expected in problem_line(error, path, key)
    assert len(error.problems) == 1, str(error)


def test_invalid_yaml_names_file_and_position(tmp_path: Path) -> None:
    """Broken YAML is a ConfigError naming the file, 'not valid YAML' and the line."""
    path = write(tmp_path, "integrations:\n  incidents: [unclosed\n")
    text = str(config_error(path))
    assert text.startswith(f"{path}: not valid YAML")
    assert "line 2" in text


def test_missing_file_names_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming the path and that it cannot be read."""
    path = tmp_path / "nowhere.yaml"
    text = str(config_error(path))
    assert text.startswith(f"{path}: cannot read the config file")
    assert "No such file" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "top-level 'integrations' key"),
        ("- just\n- a list\n", "top-level 'integrations' key"),
        ("integration:\n  x: {}\n", "top-level 'integrations' key"),
    ],
    ids=["empty", "list", "misspelt_top"],
)
def test_wrong_top_level_shape(tmp_path: Path, text: str, expected: str) -> None:
    """A file without a top-level 'integrations' mapping says so, with the file name."""
    path = write(tmp_path, text)
    message = str(config_error(path))
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_every_problem_in_one_file_is_reported(tmp_path: Path) -> None:
    """Several faults in one file (two integrations) all appear in a single ConfigError."""

    def many(d: dict[str, Any]) -> None:
        _typo(d)
        _ftp(d)
        _unset_env(d)
        _bad_cron(d)
        other = copy.deepcopy(inc(BASE))
        del other["sink"]["table"]
        d["integrations"]["Other"] = other

    path = write(tmp_path, variant(many))
    error = config_error(path)
    expected = {
        "integrations.incidents.retry.max_retris": "unknown key",
        "integrations.incidents.source.url": "http:// or https://",
        "integrations.incidents.source.auth.client_secret": f"{UNSET} is not set",
        "integrations.incidents.schedule": "5-field cron",
        "integrations.Other": "lowercase letters",
        "integrations.Other.sink.table": "Field required",
    }
    for key, what in expected.items():
        assert what in problem_line(error, path, key)
    assert len(error.problems) == len(expected), str(error)


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        ("https://${API_HOST:-api.example.com}/x", {}, "https://api.example.com/x"),
        ("https://${API_HOST:-api.example.com}/x", {"API_HOST": "h.test"}, "https://h.test/x"),
        ("https://api.example.com/x${SUFFIX:-}", {}, "https://api.example.com/x"),
        ("${SCHEME:-https}://${HOST:-a.test}:${PORT:-8443}/", {}, "https://a.test:8443/"),
    ],
    ids=["default_used", "env_wins", "empty_default", "several_refs"],
)
def test_env_default_substitution(
    tmp_path: Path, url: str, env: dict[str, str], expected: str
) -> None:
    """``${VAR:-default}`` takes the environment value when set, the default otherwise."""

    def set_url(d: dict[str, Any]) -> None:
        inc(d)["source"]["url"] = url

    config = load_config(write(tmp_path, variant(set_url)), env={**ENV, **env})
    assert config.get("incidents").source.url == expected


def test_load_config_reads_process_environment_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``env=``, ``${VAR}`` comes from os.environ."""
    monkeypatch.setenv("CLIENT_SECRET", SECRET)
    config = load_config(write(tmp_path, variant(lambda d: None)))
    auth = config.get("incidents").source.auth
    assert auth is not None and auth.client_secret is not None  # type: ignore[union-attr]
    assert auth.client_secret.get_secret_value() == SECRET  # type: ignore[union-attr]


def test_secrets_masked(tmp_path: Path) -> None:
    """client_secret, password and refresh_token print as ********** in masked() and repr."""

    def secrets(d: dict[str, Any]) -> None:
        inc(d)["source"]["auth"].update(
            grant_type="password", username="svc", password="pw-" + SECRET
        )
        inc(d)["source"]["auth"]["refresh_token"] = "rt-" + SECRET

    config = load_config(write(tmp_path, variant(secrets)), env=ENV)
    data = masked(config)
    auth = data["integrations"]["incidents"]["source"]["auth"]
    assert auth["client_secret"] == MASK
    assert auth["password"] == MASK
    assert auth["refresh_token"] == MASK
    assert auth["username"] == "svc"
    assert "source_file" not in data
    assert SECRET not in repr(data)
    assert SECRET not in repr(config)
    assert SECRET not in yaml.safe_dump(data)


def test_unknown_integration_lists_known_names() -> None:
    """HubConfig.get on a missing name raises ConfigError listing the known ones."""
    config = parse_config(copy.deepcopy(BASE), file="x", env=ENV)
    with pytest.raises(ConfigError, match=r"no integration named 'nope' \(known: incidents\)"):
        config.get("nope")


def test_cron_with_out_of_range_field_rejected(tmp_path: Path) -> None:
    """A 5-field cron string with an impossible minute is a config error, not a beat crash."""
    from tasks.schedule import load_checked_config

    def cron(d: dict[str, Any]) -> None:
        inc(d)["schedule"] = "61 * * * *"

    path = write(tmp_path, variant(cron))
    with pytest.raises(ConfigError) as caught:
        load_checked_config(path, env=ENV)
    assert "minute '61'" in problem_line(caught.value, path, "integrations.incidents.schedule")


def test_unknown_delta_timezone_rejected(tmp_path: Path) -> None:
    """An unknown IANA zone name in source.delta.timezone is reported by the config check."""

    def zone(d: dict[str, Any]) -> None:
        inc(d)["source"]["delta"] = {"timezone": "Mars/Olympus_Mons"}

    path = write(tmp_path, variant(zone))
    error = config_error(path)
    problem_line(error, path, "integrations.incidents.source.delta.timezone")


# --- ihub check ----------------------------------------------------------------------------

CLI_BAD = [
    ("unknown_key", variant(_typo), "integrations.incidents.retry.max_retris"),
    ("wrong_type", variant(_wrong_type), "integrations.incidents.retry.max_retries"),
    ("url_scheme", variant(_ftp), "integrations.incidents.source.url"),
    ("missing_env", variant(_unset_env), "integrations.incidents.source.auth.client_secret"),
    ("bad_cron", variant(_bad_cron), "integrations.incidents.schedule"),
    ("invalid_yaml", "integrations:\n  incidents: [unclosed\n", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "needle"), [c[1:] for c in CLI_BAD], ids=[c[0] for c in CLI_BAD])
def test_cli_check_bad_file_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, needle: str
) -> None:
    """`ihub check` on a bad file exits 2 with 'error: <file>: ...<key>' on stderr."""
    monkeypatch.delenv(UNSET, raising=False)
    path = write(tmp_path, text)
    result = CliRunner().invoke(main, ["check", "--config", str(path)], env=ENV)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {path}: ")
    assert needle in result.stderr
    assert result.stdout == ""


def test_cli_check_missing_file_exits_2(tmp_path: Path) -> None:
    """`ihub check` on a path that does not exist exits 2 and says it cannot read it."""
    path = tmp_path / "absent.yaml"
    result = CliRunner().invoke(main, ["check", "--config", str(path)])
    assert result.exit_code == 2
    assert f"error: {path}: cannot read the config file" in result.stderr


def test_cli_check_good_file_prints_masked_config(tmp_path: Path) -> None:
    """`ihub check` on a good file exits 0 and prints the config with the secret masked."""
    path = write(tmp_path, variant(lambda d: None))
    result = CliRunner().invoke(main, ["check", "--config", str(path)], env=ENV)
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    printed = yaml.safe_load(result.stdout)
    assert printed == masked(load_config(path, env=ENV))
    assert printed["integrations"]["incidents"]["source"]["auth"]["client_secret"] == MASK
    assert f"ok: 1 integration(s) in {path}" in result.stderr
