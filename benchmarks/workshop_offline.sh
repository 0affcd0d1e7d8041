#!/usr/bin/env bash
# Benchmark: a workshop laptop's first hour. From a wheel folder (`make wheels`), with the network switched off:
# a fresh clone, `make setup`, `tunebook prepare-model`, then notebooks 00-05 in the workshop profile.
# Reference (issue 15): install plus 00-05 under 20 minutes on 2 CPU cores, peak memory under 4 GB.
#
# Run:  bash benchmarks/workshop_offline.sh WHEELHOUSE [WORKDIR]
# The network is cut with `unshare -n` where the kernel allows it (else pip is only told not to use an index).
# Peak memory is the largest sum of resident memory over the run's whole process tree (tunebook and its kernels),
# sampled every half second.
set -euo pipefail
wheels=$(realpath "$1")
work=${2:-/tmp/tunebook-offline}
repo=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$work"
git clone -q "$repo" "$work"
cd "$work"
# a new network namespace has only a loopback, brought up for the notebook kernels (they talk over 127.0.0.1)
if unshare -n ip link set lo up 2>/dev/null; then
  offline=(unshare -n sh -c 'ip link set lo up && exec "$@"' sh); echo "network: cut (unshare -n, loopback only)"
else
  offline=(); echo "network: left on, PIP_NO_INDEX=1"
fi
export PIP_NO_INDEX=1 PIP_FIND_LINKS= PIP_CONFIG_FILE=/dev/null HF_HUB_OFFLINE=1 MLFLOW_TRACKING_URI=
# a new laptop's empty cache: nothing converted or answered on this machine before may help
export TUNEBOOK_CACHE="$work/cache"
seconds() { date +%s.%N; }

peak_of() {  # largest resident-memory sum (MB) of the process tree under pid $1, until it exits
  python3 - "$1" <<'PY'
import sys, time
from pathlib import Path
root, peak = int(sys.argv[1]), 0
def tree(pid):
    kids = [int(p) for t in Path(f"/proc/{pid}/task").glob("*") for p in (t / "children").read_text().split()]
    return [pid] + [q for k in kids for q in tree(k)]
while Path(f"/proc/{root}").exists():
    total = 0
    try:
        for pid in tree(root):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * 4096
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    peak = max(peak, total)
    time.sleep(0.5)
print(f"{peak / 2**20:.0f}")
PY
}

began=$(seconds)
"${offline[@]}" make setup WHEELHOUSE="$wheels" > setup.log 2>&1
"${offline[@]}" .venv/bin/tunebook prepare-model > prepare.log 2>&1
installed=$(seconds)
"${offline[@]}" .venv/bin/tunebook run --config workshop/profile.yaml --steps 00,01,02,03,04,05 --name workshop > run.log 2>&1 &
run_pid=$!
peak=$(peak_of $run_pid)
wait $run_pid
finished=$(seconds)
python3 - "$began" "$installed" "$finished" "$peak" runs/workshop <<'PY'
import json, sys
from pathlib import Path
began, installed, finished, peak = map(float, sys.argv[1:5])
run = Path(sys.argv[5])
print(f"{'':28}{'measured':>12}{'reference':>14}")
print(f"{'install + prepare-model':28}{(installed - began) / 60:>10.1f} m")
summary = json.loads((run / "summary.json").read_text())
for step, secs in summary.get("seconds_per_notebook", {}).items():
    print(f"{step:28}{secs / 60:>10.1f} m{'under 5 m':>14}")
print(f"{'install + 00-05':28}{(finished - began) / 60:>10.1f} m{'under 20 m':>14}")
print(f"{'peak memory (process tree)':28}{peak / 1024:>10.2f} GB{'under 4 GB':>13}")
print("\n".join(open(run.parent.parent / "run.log").read().strip().splitlines()[-3:]))
PY
# Not part of the timed journey: 06 on the released version, as `make demo` ends (40 tickets of example traffic).
"${offline[@]}" .venv/bin/tunebook run --continue runs/workshop --steps 06 --config workshop/profile.yaml 2>&1 | tail -2
