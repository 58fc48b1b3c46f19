"""The transform between source and sink: a field mapping from YAML, then a Python callable.

``fields`` names each target field and where its value comes from: a dotted path into the
source record (a rename, or a nested value lifted up), or a constant; ``type`` casts it (str,
int, float, bool, datetime, json). Unmapped fields are dropped, or kept with ``unmapped: keep``.
What YAML cannot say goes in ``callable: package.module:function``, which receives the mapped
record and returns the record to write. It runs in the worker, on the staged payload, so a fix
to the mapping applies to a requeued dead letter.

Anything that goes wrong is a ``PermanentError`` for that one record: it is dead-lettered with
the field and the reason, and the rest of the integration carries on.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from datetime import UTC
from typing import Any

from pipeline.config import IntegrationConfig
from pipeline.config_sources import FieldMap, TransformConfig
from pipeline.errors import PermanentError
from pipeline.sources.paginators import dig
from pipeline.timefmt import parse_time

Record = dict[str, Any]
_MISSING = object()
_TRUE = {"true", "t", "yes", "y", "1", "on"}
_FALSE = {"false", "f", "no", "n", "0", "off", ""}


class Transform:
    def __init__(self, config: TransformConfig, name: str = "") -> None:
        self.config = config
        self.name = name
        self.fields = config.fields
        renamed = {s.path for t, s in self.fields.items() if s.path and s.path != t}
        self.consumed = {p for p in renamed if "." not in p}
        self.hook = load_callable(config.callable) if config.callable else None

    def __call__(self, record: Record, record_id: str = "?") -> Record:
        out = self._map(record, record_id) if self.fields else dict(record)
        if self.hook is None:
            return out
        try:
            result = self.hook(out)
        except Exception as exc:
            raise self._error(record_id, f"callable {self.config.callable} raised {exc!r}") from exc
        if not isinstance(result, dict):
            raise self._error(
                record_id, f"callable {self.config.callable} returned {type(result).__name__}"
            )
        return result

    def _map(self, record: Record, record_id: str) -> Record:
        out: Record = {}
        if self.config.unmapped == "keep":
            out = {k: v for k, v in record.items() if k not in self.consumed}
        for target, spec in self.fields.items():
            value = spec.const if spec.path is None else dig_or_missing(record, spec.path)
            if value is _MISSING or value is None:
                value = spec.default
            if value is not None and spec.type is not None:
                try:
                    value = cast(value, spec)
                except (ValueError, TypeError, OverflowError) as exc:
                    raise self._error(record_id, f"field {target!r}: {exc}") from None
            out[target] = value
        return out

    def _error(self, record_id: str, message: str) -> PermanentError:
        return PermanentError(f"transform {self.name}: record {record_id}: {message}")


def dig_or_missing(record: Record, path: str) -> Any:
    parent, _, last = path.rpartition(".")
    node = dig(record, parent) if parent else record
    if not isinstance(node, dict) or last not in node:
        return _MISSING
    return node[last]


def cast(value: Any, spec: FieldMap) -> Any:
    """One of the simple casts; ValueError (or TypeError) when the value does not fit."""
    kind = spec.type
    if kind == "str":
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if kind == "int":
        return _to_int(value)
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if kind == "bool":
        return _to_bool(value)
    if kind == "datetime":
        moment = parse_time(value, spec.format)
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps(value, sort_keys=True, default=str)  # json


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            number = float(text)
            if not number.is_integer():
                raise ValueError(f"expected an integer, got {value!r}") from None
            return int(number)
    return int(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected a boolean (true/false, yes/no, 1/0), got {value!r}")


def load_callable(path: str) -> Callable[[Record], Any]:
    """``package.module:function`` (or ``package.module.function``), imported once."""
    module, sep, attr = path.partition(":")
    if not sep:
        module, _, attr = path.rpartition(".")
    try:
        hook = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise PermanentError(f"transform callable {path!r} cannot be loaded: {exc}") from None
    if not callable(hook):
        raise PermanentError(f"transform callable {path!r} is not callable")
    return hook  # type: ignore[no-any-return]


_compiled: dict[int, tuple[TransformConfig, Transform]] = {}


def apply(integration: IntegrationConfig, record_id: str, payload: Record) -> Record:
    """The record to write for this staged payload: the integration's transform, if any.

    A transform that cannot be built (its callable does not import) fails every record the same
    way, as a permanent error naming the callable.
    """
    config = integration.transform
    if config is None:
        return payload
    cached = _compiled.get(id(config))
    if cached is None or cached[0] is not config:
        cached = (config, Transform(config, integration.name))
        _compiled[id(config)] = cached
    return cached[1](payload, record_id)
