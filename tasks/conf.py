"""celeryconfig into a Celery app, each setting where a lookup finds it at once.

Celery looks a setting up through a chain of maps: what the app set, the config object (read
with ``getattr``), then Celery's defaults. A setting left at its default is missed, by an
exception raised and caught, in each map before the last, and publishing one task reads dozens
of settings: a quarter of a publish's CPU went there (measured in bench/README.md: 151-161 ->
116-122 us a task). So every setting is copied, once, into the app's own map, the first one.
Setting one later (``app.conf.x = ...``) writes that same map, so nothing reads a stale value.

The benchmark's no-op ceiling (bench/noop_tasks.py) loads its settings the same way, so it
stays Celery's own cost with ihub's settings.
"""

from __future__ import annotations

from celery import Celery


def load_celeryconfig(app: Celery) -> None:
    """``app.config_from_object("celeryconfig")``, then every setting in the first map."""
    app.config_from_object("celeryconfig")
    conf = app.conf
    # lower-case names only: celeryconfig's constants and imports (FETCH_QUEUE, Queue) and a
    # module's dunders are not settings
    names = [name for name in list(conf) if name.islower() and not name.startswith("_")]
    conf.update({name: conf[name] for name in names})
