"""Print pip constraints that pin every dependency to the lowest version pyproject.toml accepts.

    python .ci/floors.py [EXTRA ...] > floor-constraints.txt

`make test-floor` installs the package with these constraints and runs the fast tests, so a
range whose floor no longer works (transformers 5.17 crashed every run without liger-kernel; 5.5
changed results under gradient accumulation) is caught by CI instead of by a user. Only `>=`
lower bounds are pinned; the optional extras named on the command line are included.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parent.parent


def requirements(extras: list[str]) -> list[str]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    if tomllib is None:
        raise SystemExit("floors.py needs Python >= 3.11 (tomllib)")
    project = tomllib.loads(text)["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        if extra not in project.get("optional-dependencies", {}):
            raise SystemExit(f"floors.py: pyproject.toml has no extra {extra!r}")
        reqs += project["optional-dependencies"][extra]
    return reqs


def floor(requirement: str) -> str | None:
    """`transformers>=5.6,<6` -> `transformers==5.6`; None without a lower bound."""
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*(.*)", requirement)
    name, spec = m.group(1), m.group(2)
    low = re.search(r">=\s*([0-9][^,;\s]*)", spec)
    return f"{name}=={low.group(1)}" if low else None


def main(argv: list[str]) -> int:
    pins = {}
    for req in requirements(argv):
        pin = floor(req)
        if pin:
            pins[pin.split("==")[0].lower()] = pin
    print("\n".join(sorted(pins.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
