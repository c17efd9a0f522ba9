"""Compare two report.json files, ignoring timestamps, timings and paths: ``python -m lm_diff.dev.compare_reports A B``.

Prints the differences (keys present in one only, values that differ) and counts floats that agree within 1e-12
relative (the last-digit differences of a library swap, e.g. Benjamini-Hochberg through scipy). Exit code 1 when
anything else differs. Used to check that a refactor leaves the demo's report unchanged.
"""

from __future__ import annotations

import json
import sys
from typing import Any

IGNORED = {"generated_at", "timings", "seconds"}


def _is_path(x: Any) -> bool:
    return isinstance(x, str) and "/" in x and any(s in x for s in ("stages", "runs", "/tmp", "/work", "/home"))


def compare(a: Any, b: Any) -> tuple[list[tuple], list[tuple]]:
    """(differences, floats equal within 1e-12) between two JSON values."""
    diffs: list[tuple] = []
    close: list[tuple] = []

    def walk(x: Any, y: Any, path: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                if k in IGNORED:
                    continue
                if k not in x or k not in y:
                    diffs.append((f"{path}/{k}", "only in " + ("the second" if k not in x else "the first")))
                    continue
                walk(x[k], y[k], f"{path}/{k}")
        elif isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                diffs.append((path, f"length {len(x)} vs {len(y)}"))
                return
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{path}[{i}]")
        elif _is_path(x) and _is_path(y):
            return
        elif isinstance(x, float) and isinstance(y, float) and x != y:
            (close if abs(x - y) <= 1e-12 * max(1.0, abs(x)) else diffs).append((path, x, y))
        elif x != y:
            diffs.append((path, x, y))

    walk(a, b, "")
    return diffs, close


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m lm_diff.dev.compare_reports FIRST/report.json SECOND/report.json", file=sys.stderr)
        return 2
    with open(args[0], encoding="utf-8") as fa, open(args[1], encoding="utf-8") as fb:
        diffs, close = compare(json.load(fa), json.load(fb))
    print(f"{len(diffs)} differences; {len(close)} floats equal within 1e-12")
    for d in diffs:
        print("  " + str(d)[:240])
    for d in close:
        print("  ~ " + str(d)[:240])
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
