"""One settings object: every IHUB_* variable is a field, documented, validated as a whole."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.settings import ENV_NAMES, settings_from_env

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("pipeline", "tasks", "models", "ihub")


def test_defaults_need_no_environment(tmp_path: Path) -> None:
    """With nothing set, ihub runs embedded: SQLite under IHUB_HOME and no broker URL."""
    settings = settings_from_env({"IHUB_HOME": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path / 'ihub.db'}"
    assert settings.embedded_broker and settings.visibility_timeout == 7200


def test_every_bad_value_is_named_and_secrets_are_not_echoed() -> None:
    """All problems are reported at once, each naming its variable; a secret's value is hidden."""
    with pytest.raises(ConfigError) as caught:
        settings_from_env(
            {"IHUB_RECONCILE_AFTER": "soon", "IHUB_VISIBILITY_TIMEOUT": "-1", "IHUB_HOME": "x"}
        )
    text = str(caught.value)
    assert "IHUB_RECONCILE_AFTER" in text and "'soon'" in text
    assert "IHUB_VISIBILITY_TIMEOUT" in text
    assert "IHUB_SECRET_KEY" in _secret_problem() and "(hidden)" in _secret_problem()


def _secret_problem() -> str:
    from pipeline.settings import _problem

    return _problem("secret_key", {"msg": "Bad", "input": "s3cr3t-value"})


def test_secret_key_is_kept_out_of_repr() -> None:
    """A settings object printed in a log or a traceback shows no secret."""
    settings = settings_from_env({"IHUB_SECRET_KEY": "k" * 40, "IHUB_WEB_PASSWORD": "pw-123456"})
    assert "k" * 40 not in repr(settings) and "pw-123456" not in repr(settings)
    assert "s3cr3t-value" not in _secret_problem()


def test_every_variable_the_code_reads_is_a_setting_in_the_readme_table() -> None:
    """No module reads an IHUB_* variable that the settings object and README do not know."""
    named = {
        match
        for folder in CODE_DIRS
        for path in (ROOT / folder).rglob("*.py")
        for match in re.findall(r"\bIHUB_[A-Z_]+\b", path.read_text())
    }
    # the demo's own config, set by `ihub demo`
    named -= {"IHUB_DEMO_URL", "IHUB_DEMO_SECRET", "IHUB_DEMO_SN_URL", "IHUB_DEMO_SN_SECRET"}
    readme = (ROOT / "README.md").read_text()
    table = {m for m in re.findall(r"^\| `(IHUB_[A-Z_]+)`", readme, re.M)}
    table |= {m for m in re.findall(r"/ `(IHUB_[A-Z_]+)` \|", readme, re.M)}
    assert named <= set(ENV_NAMES.values()), named - set(ENV_NAMES.values())
    assert set(ENV_NAMES.values()) <= table, set(ENV_NAMES.values()) - table
