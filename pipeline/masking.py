"""What of an integration config is secret: for ``ihub check`` and for ``redact``.

Typed secrets (``SecretStr``) are not the only ones: an API key travels in ``headers`` or
``params``, an audience or a key in ``extra_params``, a password in a database URL, and any
``${VAR}`` value came from the environment because someone thought it should not be in the file.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr

from models.redaction import MASK, SECRET_NAME, redact

# the mappings whose values are sent with every request
REQUEST_MAPS = frozenset({"headers", "params", "extra_params", "body"})


def mask_config(data: Any, substituted: dict[str, list[str]], path: str = "") -> Any:
    """``data`` (a config as plain data) with secret values shown as ********.

    Masked: values under headers/params/extra_params/body whose names look secret, every
    value or part of one that came from ``${VAR}`` (``substituted``: path -> values), the
    password of a URL, secret-named query parameters and every registered secret."""
    if isinstance(data, dict):
        inside = path.rpartition(".")[2] in REQUEST_MAPS or ".body." in f"{path}."
        return {
            k: MASK
            if inside and SECRET_NAME.search(str(k)) and isinstance(v, str | int) and v != ""
            else mask_config(v, substituted, f"{path}.{k}" if path else str(k))
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [mask_config(v, substituted, f"{path}[{i}]") for i, v in enumerate(data)]
    if isinstance(data, str):
        for value in sorted(substituted.get(path, []), key=len, reverse=True):
            if value:
                data = data.replace(value, MASK)
        return redact(data)
    return data


def config_secrets(config: BaseModel, substituted: dict[str, list[str]]) -> list[str]:
    """The values ``redact`` must learn: typed secrets, secret-named or ``${VAR}`` values of
    the request mappings, and URL passwords."""
    found: list[str] = []

    def walk(value: Any, path: str, inside: bool) -> None:
        key = path.rpartition(".")[2]
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name), f"{path}.{name}" if path else name, inside)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}", inside or key in REQUEST_MAPS)
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]", inside)
        elif isinstance(value, str):
            if inside and SECRET_NAME.search(key):
                found.append(value)
            if inside:
                found.extend(substituted.get(path, []))
            found.extend(_url_password(value))

    walk(config, "", False)
    return [v for v in found if v]


def _url_password(value: str) -> list[str]:
    if "://" not in value or "@" not in value:
        return []
    try:
        password = urlsplit(value).password
    except ValueError:
        return []
    return [password] if password else []
