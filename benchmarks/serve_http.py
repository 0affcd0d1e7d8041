"""Benchmark: a released version served over HTTP by `tunebook serve` (mlflow models serve), as a client sees it.

Run:  .venv/bin/python benchmarks/serve_http.py --run runs/<name> [--run runs/<other>] [--tickets 71]

For each run folder that 05 released: start `tunebook serve` on that version (one worker) on a free local port, time
the start until the server answers /ping (the model loaded), then post the run's test tickets one request at a time
and report p50 / p95 milliseconds per request as the client measures them, and whether every answer equals the one
04 scored. Lists several runs side by side (e.g. a released classical system next to a released adapter). A cold
figure is the server's own start: Python, MLflow and the model, not the first request.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunebook.core.runfolder import RunFolder  # noqa: E402


def free_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, rows: list[dict]) -> list[dict]:
    """The server's predictions for one request."""
    body = json.dumps({"dataframe_records": rows}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as reply:
        return json.loads(reply.read())["predictions"]


def measure(run: RunFolder, tickets: int) -> dict:
    """Start, per-request latency and agreement with 04 for the version ``run`` released."""
    registered = run.read_registered()
    evaluated = run.read_predictions(run.tuned_predictions).head(tickets or None)
    port = free_port()
    command = [str(Path(sys.executable).parent / "tunebook"), "serve", "--job", run.read_job_card().name]
    command += ["--version", registered.version, "--tracking-uri", registered.tracking_uri, "--port", str(port)]
    env = {**os.environ, "TUNEBOOK_CACHE": str(run.root / ".bench_cache")}
    started = time.perf_counter()
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.perf_counter() - started > 600:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.1)
        start_s = time.perf_counter() - started
        rows = evaluated[["id", "text"]].to_dict("records")
        post(url, rows[:1])  # warm-up
        times, answers = [], []
        for row in rows:
            began = time.perf_counter()
            answers.append(post(url, [row])[0]["prediction"])
            times.append((time.perf_counter() - began) * 1000)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    same = sum(str(a) == str(e) for a, e in zip(answers, evaluated["prediction"]))
    return {
        "system": run.read_results("05_release").system_kind,
        "version": registered.version,
        "start_s": start_s,
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "same": f"{same}/{len(rows)}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="a run folder that 05 released (repeatable)")
    parser.add_argument("--tickets", type=int, default=0, help="test tickets posted (0: all)")
    args = parser.parse_args()
    print(f"{'run':<28} {'system':<10} {'version':>7} {'start s':>8} {'p50 ms':>8} {'p95 ms':>8} {'same as 04':>11}")
    for folder in args.run:
        found = measure(RunFolder(Path(folder)), args.tickets)
        print(
            f"{Path(folder).name:<28} {found['system']:<10} {found['version']:>7} {found['start_s']:>8.1f} "
            f"{found['p50_ms']:>8.1f} {found['p95_ms']:>8.1f} {found['same']:>11}"
        )


if __name__ == "__main__":
    main()
