"""Do two run folders hold the same results? Dataset hash, adapter weights, test metrics and the gate, side by side.

Used to check that a refactor kept behaviour: run `make demo` before and after it (same seed, same machine) and
compare the two folders. Exits 1 if anything differs.

    .venv/bin/python benchmarks/same_run.py runs/demo-before runs/demo-after
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunebook.core.runfolder import RunFolder
from tunebook.core.tables import file_hash


def figures(run: RunFolder) -> dict[str, object]:
    """What must not change: the data, the weights, every headline test metric of baseline and tuned, the gate."""
    found: dict[str, object] = {"dataset hash": run.read_dataset_version().hash}
    weights = run.trained_weights()
    found["adapter sha256"] = file_hash(weights) if weights else None
    for role, path in (("baseline", run.baseline_scores()), ("tuned", run.tuned_scores)):
        if path.is_file():
            scores = run.read_scores(path).as_dict()
            found[f"{role} variant"] = scores.get("variant")
            for key in scores["headline_keys"]:
                found[f"{role} {key}"] = scores[key]
    if run.gate.is_file():
        gate = run.read_gate()
        found["gate passed"] = gate.passed
        found["gate failed checks"] = ", ".join(gate.failed) or "-"
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    before, after = figures(RunFolder(args.before)), figures(RunFolder(args.after))
    width = max(len(k) for k in {**before, **after})
    print(f"{'':{width}}  {'before':>20}  {'after':>20}  same")
    differ = 0
    for key in {**before, **after}:
        a, b = before.get(key), after.get(key)
        same = a == b
        differ += not same
        show = [str(v)[:16] + "..." if isinstance(v, str) and len(v) > 19 else v for v in (a, b)]
        print(f"{key:{width}}  {show[0]!s:>20}  {show[1]!s:>20}  {'yes' if same else 'NO'}")
    print(f"\n{differ} difference(s)")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
