"""Scenario x path pairs from ``pytest --collect-only -q`` output (issue 12 item 7).

    python docs/test-suite/pairs.py collect.txt > pairs.txt
    python docs/test-suite/pairs.py --diff before.txt after.txt

A test id's path is the path id among its parameters (``[legacy-gevent-idle_timeout]``);
the scenario is the test id without it. Tests without a path parameter are listed with
path ``-``.
"""

from __future__ import annotations

import re
import sys

from async_core.harness import CONTRACT_PATHS, LOOP_PATHS

# The path ids the suite runs on (the harness' one table), longest first: ``async-uvloop``
# before ``async``.
PATHS = sorted([*CONTRACT_PATHS, *LOOP_PATHS], key=len, reverse=True)
_PATH = re.compile(r"(?:^|-)(" + "|".join(PATHS) + r")(?=-|$)")


def pairs(lines: list[str]) -> list[tuple[str, str]]:
    """(scenario, path) for each collected test id in ``lines``."""
    out = []
    for line in lines:
        line = line.strip()
        if "::" not in line:
            continue
        m = re.match(r"(.*?)\[(.*)\]$", line)
        if not m:
            out.append((line, "-"))
            continue
        name, params = m.groups()
        found = _PATH.search(params)
        if not found:
            out.append((line, "-"))
            continue
        rest = (params[:found.start()] + params[found.end():]).strip("-")
        out.append((f"{name}[{rest}]" if rest else name, found.group(1)))
    return out


def main(argv: list[str]) -> None:
    if argv[:1] == ["--diff"]:
        with open(argv[1]) as f:
            before = {tuple(ln.rstrip("\n").split("\t")) for ln in f if "\t" in ln}
        with open(argv[2]) as f:
            after = {tuple(ln.rstrip("\n").split("\t")) for ln in f if "\t" in ln}
        for tag, rows in (("dropped", before - after), ("added", after - before)):
            print(f"# {tag}: {len(rows)}")
            for scenario, path in sorted(rows):
                print(f"{path}\t{scenario}")
        return
    with open(argv[0]) as f:
        for scenario, path in sorted(pairs(f.readlines())):
            print(f"{scenario}\t{path}")


if __name__ == "__main__":
    main(sys.argv[1:])
