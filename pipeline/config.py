"""Integration definitions: YAML, validated strictly, every problem reported at once.

An error reads ``file: key.path: what was expected``; unknown keys are errors, never ignored.
``${VAR}`` anywhere in a value is read from the environment; secrets become ``SecretStr`` so
they print as ``**********``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.config_auth import AuthConfig
from pipeline.config_sinks import LookupConfig, RestDeletesConfig, SqlSinkConfig
from pipeline.config_sources import (
    _PAGINATION_TAGS,
    CursorPagination,
    DeletesConfig,
    DeltaConfig,
    KeysetPagination,
    PaginationConfig,
    SourceLimits,
    TransformConfig,
    host_entry,
    http_url,
)
from pipeline.errors import ConfigError
from pipeline.timefmt import TimeFormat

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(Strict):
    url: str
    auth: AuthConfig | None = None
    method: Literal["GET", "POST"] = "GET"
    body: dict[str, Any] | None = Field(None, description="JSON body of a POST search")
    records: str = Field("", description="dotted path of the list in the response; '' = top level")
    id: str = "id"
    updated: str = "updated_at"
    updated_format: TimeFormat = "iso"
    ordered: bool = Field(False, description="the listing is sorted by updated, then id")
    delta: DeltaConfig = Field(default_factory=DeltaConfig)
    pagination: PaginationConfig = Field(default_factory=CursorPagination)
    params: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(30.0, gt=0)
    rate_limit: float | None = Field(None, gt=0, description="requests a second, all workers")
    rate_burst: int = Field(1, ge=1)
    deletes: DeletesConfig | None = None
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="other hosts (host or host:port) a next-page URL may lead to, same scheme",
    )
    limits: SourceLimits = Field(default_factory=SourceLimits)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return [host_entry(entry) for entry in value]

    @model_validator(mode="before")
    @classmethod
    def _bound_in_body(cls, data: Any) -> Any:
        """A body with a {watermark} placeholder carries the bound: no default parameter."""
        if isinstance(data, dict) and "{watermark}" in str(data.get("body") or ""):
            delta = data.get("delta") or {}
            if isinstance(delta, dict) and "param" not in delta:
                data = {**data, "delta": {**delta, "param": None}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> SourceConfig:
        if self.body is not None and self.method != "POST":
            raise ValueError("'body' needs method: POST")
        if self.pagination.type == "keyset" and not (
            self.delta.param or "{watermark}" in str(self.body or "")
        ):
            raise ValueError("keyset pagination needs delta.param or {watermark} in body")
        return self

    @property
    def keyset_by_id(self) -> bool:
        """Whether a keyset request can say "after this id" (so every page makes progress)."""
        pagination = self.pagination
        if not isinstance(pagination, KeysetPagination):
            return False
        placeholders = str(self.delta.template or "") + str(self.body or "")
        return bool(pagination.id_param or "{id}" in placeholders)


class RestSinkConfig(Strict):
    """Another system's REST API as the target: one request per record.

    Without ``lookup``, ``url`` is the record's URL ({id}: the url-quoted key) and the body
    carries ``version_field`` so a target comparing versions can refuse a stale write (a
    refusal with one of ``stale_status`` counts as done). With ``lookup``, ``url`` is the
    collection: the record is found by its match field, then updated by its target id
    (``item_url``), or created with a POST; ihub keeps the id map and the version guard.
    """

    type: Literal["rest"]
    url: str = Field(description="the record's URL ({id}), or the collection URL with lookup")
    method: Literal["PUT", "POST", "PATCH"] = "PUT"
    key: str = "id"
    auth: AuthConfig | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(30.0, gt=0)
    version_field: str | None = "_ihub_version"
    stale_status: list[int] = Field(default_factory=lambda: [409, 412])
    lookup: LookupConfig | None = None
    item_url: str | None = Field(None, description="default: {url}/{target_id}")
    update_method: Literal["PATCH", "PUT"] = "PATCH"
    idempotency_key: bool = Field(True, description="send an Idempotency-Key on writes")
    idempotency_header: str = "Idempotency-Key"
    deletes: RestDeletesConfig | None = None
    rate_limit: float | None = Field(None, gt=0, description="requests a second, all workers")
    rate_burst: int = Field(1, ge=1)
    lock_wait: float = Field(
        10.0, ge=0, description="seconds to wait for a key another worker writes"
    )

    @field_validator("url", "item_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        return value

    @model_validator(mode="after")
    def _lookup_urls(self) -> RestSinkConfig:
        if self.lookup is not None and "{id}" in self.url:
            raise ValueError("with lookup, url is the collection URL (no {id}); see item_url")
        if self.item_url is not None and "{target_id}" not in self.item_url:
            raise ValueError("item_url needs the {target_id} placeholder")
        return self

    @property
    def record_url(self) -> str:
        """The URL of one target record, with a ``{target_id}`` placeholder."""
        return self.item_url or self.url.rstrip("/") + "/{target_id}"


def _sink_tag(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("type", "sql"))
    return str(getattr(value, "type", "sql"))


SinkConfig = Annotated[
    Annotated[SqlSinkConfig, Tag("sql")] | Annotated[RestSinkConfig, Tag("rest")],
    Discriminator(_sink_tag),
]


class RetryConfig(Strict):
    max_retries: int = Field(8, ge=0, le=100)
    backoff: float = Field(2.0, ge=0)
    backoff_max: float = Field(600.0, ge=0)
    jitter: bool = True


class RedriveConfig(Strict):
    """Requeue dead letters on a schedule, run by beat; off unless ``enabled``."""

    enabled: bool = False
    every: float = Field(1800.0, gt=0, description="seconds between two redrives")
    reasons: list[Literal["transient", "crash", "permanent"]] = Field(
        default_factory=lambda: ["transient"]
    )
    max_requeues: int = Field(3, ge=1, description="only letters requeued fewer times than this")
    rate: float = Field(50.0, gt=0, description="records published a second")


class FetchConfig(Strict):
    """Bounds of one fetch run and its page-level retries: every run ends, checkpointed, and
    the next one starts at once while there is more to read."""

    max_pages: int = Field(500, ge=1, description="pages per run; the rest is the next run's")
    max_seconds: float = Field(
        300.0, gt=0, description="seconds per run (at most half of IHUB_FETCH_TIME_LIMIT)"
    )
    page_retries: int = Field(3, ge=0, le=10, description="retries of one page in place")
    page_backoff: float = Field(1.0, ge=0, description="first page retry delay, then doubled")
    page_backoff_max: float = Field(30.0, ge=0, description="cap of one delay, Retry-After too")


class IntegrationConfig(Strict):
    name: str = ""
    schedule: float | str = 60.0
    source: SourceConfig
    sink: SinkConfig
    retry: RetryConfig = Field(default_factory=RetryConfig)
    fetch: FetchConfig = Field(default_factory=FetchConfig)
    transform: TransformConfig | None = None
    redrive: RedriveConfig = Field(default_factory=RedriveConfig)
    classify: str | None = Field(
        None, description="module:function judging 2xx responses of the source and a REST sink"
    )
    enabled: bool = True
    mode: Literal["per-record", "batched"] = Field(
        "per-record",
        description="per-record: one task per staged row; batched: one task per batch_size rows, "
        "written with multi-row upserts (a SQL sink in the system-of-record database)",
    )
    batch_size: int = Field(500, ge=1, le=10000, description="rows per task in batched mode")

    @field_validator("classify")
    @classmethod
    def _hook_path(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
            raise ValueError(f"expected 'package.module:function', got {value!r}")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: float | str) -> float | str:
        if isinstance(value, str):
            _check_cron(value)
        if not isinstance(value, str) and value <= 0:
            raise ValueError("expected a positive number of seconds")
        return value if isinstance(value, str) else float(value)


def _check_cron(text: str) -> None:
    """Only the shape: the fields themselves are judged by the scheduler's own parser.

    ``tasks.schedule.load_checked_config`` hands each cron string to Celery's ``crontab``, the
    code that will run it; a second parser here would disagree with it (``0 0 * * 7``,
    ``0 9 * * mon``), and pipeline/ never imports Celery.
    """
    if len(text.split()) != 5:
        raise ValueError(f"expected seconds or a 5-field cron string, got {text!r}")


class HubConfig(Strict):
    integrations: dict[str, IntegrationConfig]
    source_file: str = ""
    # key path -> the values ${VAR} put there (for masking; never dumped)
    _substituted: dict[str, list[str]] = PrivateAttr(default_factory=dict)

    def get(self, name: str) -> IntegrationConfig:
        try:
            return self.integrations[name]
        except KeyError:
            known = ", ".join(sorted(self.integrations)) or "none"
            raise ConfigError(f"no integration named {name!r} (known: {known})") from None


def load_config(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> HubConfig:
    """Read, substitute and validate a config file; raise ConfigError listing every problem."""
    file = str(path)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the config file: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    return parse_config(raw, file=file, env=os.environ if env is None else env)


def parse_config(raw: Any, *, file: str, env: Any) -> HubConfig:
    if not isinstance(raw, dict) or "integrations" not in raw:
        raise ConfigError(f"{file}: expected a mapping with a top-level 'integrations' key")
    problems: list[str] = []
    substituted: dict[str, list[str]] = {}
    data = _substitute(raw, env, file, "", problems, substituted)
    integrations = data.get("integrations")
    if isinstance(integrations, dict):
        for name, body in integrations.items():
            if not _NAME.match(str(name)):
                problems.append(
                    f"{file}: integrations.{name}: expected a name of lowercase letters, "
                    "digits and _ (starting with a letter)"
                )
            if isinstance(body, dict):
                body.setdefault("name", name)
    try:
        config = HubConfig.model_validate({**data, "source_file": file})
    except ValidationError as exc:
        problems.extend(_describe(exc, file))
        config = None
    if problems or config is None:
        raise ConfigError(f"{file}: invalid configuration", problems)
    config._substituted = substituted
    return config


def _substitute(
    node: Any, env: Any, file: str, key: str, problems: list[str], used: dict[str, list[str]]
) -> Any:
    if isinstance(node, dict):
        return {
            k: _substitute(v, env, file, f"{key}.{k}" if key else str(k), problems, used)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [
            _substitute(v, env, file, f"{key}[{i}]", problems, used) for i, v in enumerate(node)
        ]
    if not isinstance(node, str):
        return node

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            used.setdefault(key, []).append(str(env[name]))
            return str(env[name])
        if default is not None:
            return default
        problems.append(f"{file}: {key}: environment variable {name} is not set")
        return ""

    return _ENV_REF.sub(replace, node)


def _describe(exc: ValidationError, file: str) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        location = ".".join(str(p) for p in error["loc"] if not _is_union_tag(p))
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key (check its spelling)"
        lines.append(f"{file}: {location}: {message}")
    return lines


def _is_union_tag(part: object) -> bool:
    tags = {"oauth2", "none", "sql", "rest", *_PAGINATION_TAGS}
    return isinstance(part, str) and (part in tags or "[" in part)


def masked(config: HubConfig) -> dict[str, Any]:
    """The effective config as plain data with every secret shown as ******** (typed secrets,
    secret-named headers/params/extra_params, ``${VAR}`` values, URL passwords)."""
    from pipeline.masking import mask_config

    data = config.model_dump(mode="json", exclude={"source_file"})
    return dict(mask_config(data, config._substituted))


def secrets_of(config: HubConfig) -> list[str]:
    """Every value of ``config`` that ``redact`` must mask (see ``pipeline.masking``)."""
    from pipeline.masking import config_secrets

    return config_secrets(config, config._substituted)
