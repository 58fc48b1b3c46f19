"""Write constraints.txt: the exact versions of ihub's runtime dependencies in this environment.

Run it in a virtualenv where `pip install .` (or -e .) succeeded and the tests pass:

    python tools/constraints.py > constraints.txt

It walks the dependency closure of the installed ``ihub`` distribution (extras of the
requirements included, ihub's own extras such as ``[test]`` not), so the image installs with
``pip install -c constraints.txt`` exactly what was tested.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(root: str) -> dict[str, str]:
    """{canonical name: version} of every distribution ``root`` needs at run time."""
    found: dict[str, str] = {}
    pending: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while pending:
        name, extras = pending.pop()
        dist = distribution(name)
        for text in dist.requires or []:
            requirement = Requirement(text)
            if not _applies(requirement, extras):
                continue
            key = canonicalize_name(requirement.name)
            try:
                version = distribution(requirement.name).version
            except PackageNotFoundError:
                continue  # an optional dependency this environment does not need
            seen = key in found
            found[key] = version
            if not seen or requirement.extras:
                pending.append((requirement.name, frozenset(requirement.extras)))
    found.pop(canonicalize_name(root), None)
    return found


def _applies(requirement: Requirement, extras: frozenset[str]) -> bool:
    if requirement.marker is None:
        return True
    environments = [{**default_environment(), "extra": e} for e in extras or {""}]
    return any(requirement.marker.evaluate(env) for env in environments)


def main() -> None:
    pins = closure("ihub")
    python = ".".join(map(str, sys.version_info[:2]))
    print(f"# ihub's runtime dependencies as tested (Python {python}); regenerate with")
    print("#   python tools/constraints.py > constraints.txt")
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")


if __name__ == "__main__":
    main()
