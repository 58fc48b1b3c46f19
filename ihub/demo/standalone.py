"""``python -m ihub.demo.source``: the demo source on its own, for benchmarks and docker."""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import fields
from typing import Any

from ihub.demo.options import CHOICES, DemoSourceOptions


def parser() -> argparse.ArgumentParser:
    """One flag per DemoSourceOptions field (e.g. --token-lifetime), so the two never drift."""
    p = argparse.ArgumentParser(
        prog="python -m ihub.demo.source",
        description="A demo OAuth 2.0 REST source over an in-memory table that keeps changing.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8700)
    p.add_argument("--seed", type=int, default=0, help="records to create at start")
    p.add_argument("--mutate-every", type=float, default=0.0, help="seconds; 0 = never")
    p.add_argument("--mutate-count", type=int, default=5, help="changes per mutation round")
    p.add_argument("--random-seed", type=int, default=None)
    for f in fields(DemoSourceOptions):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = str if f.default is None else type(f.default)
            p.add_argument(flag, type=kind, default=f.default, choices=CHOICES.get(f.name))
    return p


def options_of(args: argparse.Namespace) -> DemoSourceOptions:
    return DemoSourceOptions(**{f.name: getattr(args, f.name) for f in fields(DemoSourceOptions)})


def run(source: Any, args: argparse.Namespace) -> None:
    """Seed, announce, mutate every ``--mutate-every`` seconds until Ctrl-C; then stop."""
    source.seed(args.seed)
    print(
        f"demo source on {source.url} (token endpoint {source.token_url}, "
        f"client_id={source.options.client_id}); Ctrl-C stops",
        flush=True,
    )
    rng = random.Random(args.random_seed)
    try:
        while True:
            time.sleep(args.mutate_every if args.mutate_every > 0 else 3600)
            if args.mutate_every > 0:
                source.mutate_random(args.mutate_count, rng)
    except KeyboardInterrupt:
        pass
    finally:
        source.stop()
