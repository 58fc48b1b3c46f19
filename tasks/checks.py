"""Start-up checks that refuse a configuration Redis would punish silently.

A message not acked within the visibility timeout is delivered again while the first worker
still holds it (PITFALLS 1-3): every countdown plus the task's hard limit must fit inside it,
and so must a prefetched message waiting behind a task that runs to its limit.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import HubConfig
from pipeline.errors import ConfigError


def check_visibility(conf: Any, config: HubConfig | None, task_limits: dict[str, float]) -> None:
    timeout = float(conf.visibility_timeout)
    transport = float(conf.broker_transport_options.get("visibility_timeout", 0))
    if transport != timeout:
        raise ConfigError(
            f"celeryconfig: broker_transport_options.visibility_timeout ({transport:.0f}) "
            f"differs from visibility_timeout ({timeout:.0f}): set both to the same value"
        )
    problems = []
    longest = max(task_limits.values(), default=0.0)
    depth = int(conf.worker_prefetch_multiplier) + 1
    if depth * longest >= timeout:
        problems.append(
            f"visibility_timeout {timeout:.0f}s must exceed (prefetch {depth - 1} + 1) x the "
            f"longest hard time limit {longest:.0f}s"
        )
    for name, integration in (config.integrations if config else {}).items():
        worst = integration.retry.backoff_max + task_limits.get("ihub.process_record", 0.0)
        if worst >= timeout:
            problems.append(
                f"integrations.{name}.retry.backoff_max: {integration.retry.backoff_max:.0f}s "
                f"plus the process time limit reaches the visibility timeout {timeout:.0f}s; "
                "lower it or raise IHUB_VISIBILITY_TIMEOUT"
            )
    if problems:
        raise ConfigError("the broker would deliver tasks twice", problems)
