"""Footprint: a node's memory and disk with many jobs and executions, and the
time it takes to restart and serve from them.

One node gets 10,000 jobs (1,000 with --quick), then executions made the only
way a user can make them: runs of ``true`` by hand (POST /jobs/NAME/run, 32
clients, round robin over the jobs) for a time budget. A run costs a fire
commit, a process and a finish commit, so a budget reaches tens of thousands
of executions, not the issue's 1,000,000; the per-execution cost measured on
the way is extrapolated to 1,000,000 and the table says so. Resident memory
(VmRSS) is the node process alone; disk is the whole data dir (SQLite, WAL,
raft journal and snapshot).

Restart is timed twice: after SIGTERM (a clean stop) and after SIGKILL (the
journal is replayed), each until /health answers and until the node is ready
(caught up, leader elected, scheduler running).

    .venv/bin/python -m bench.footprint [--quick] [--seconds N]
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from typing import Any

from bench import harness

TARGET_EXECUTIONS = 1_000_000
MB = 1024 * 1024
CHECKPOINTS = 4


def snapshot(node: harness.Node, label: str, executions: int) -> list[Any]:
    # Let WAL checkpoints and compaction settle a moment before measuring.
    time.sleep(2.0)
    return [
        label,
        executions,
        f"{node.rss_bytes() / MB:.0f}",
        f"{harness.dir_bytes(node.data_dir) / MB:.1f}",
    ]


def seed(base: str, names: list[str], seconds: float) -> int:
    """Run jobs by hand for ``seconds``; return how many runs were accepted."""
    deadline = time.monotonic() + seconds
    cycle = itertools.cycle(names)

    def requests():  # type: ignore[no-untyped-def]
        while time.monotonic() < deadline:
            yield ("POST", f"/jobs/{next(cycle)}/run", None)

    results = asyncio.run(harness.run_requests(base, requests(), clients=32))
    return sum(1 for status, _ in results if status == 202)


def time_restart(node: harness.Node, how: str) -> list[Any]:
    if how == "SIGTERM":
        node.stop()
    else:
        node.kill()
    began = time.monotonic()
    node.start(wait=False)

    def serving() -> bool:
        try:
            return harness.call(node.url, "GET", "/health")[0] == 200
        except OSError:
            return False

    harness.wait_until(serving, 300, "health", node, interval=0.01)
    health_s = time.monotonic() - began
    harness.wait_until(node.ready, 300, "ready", node, interval=0.01)
    ready_s = time.monotonic() - began
    return [how, f"{health_s:.2f}", f"{ready_s:.2f}", f"{node.rss_bytes() / MB:.0f}"]


def main() -> None:
    parser = harness.arguments(__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, help="seconds of manual runs")
    args = parser.parse_args()
    jobs = 1000 if args.quick else 10000
    budget = args.seconds or (5.0 if args.quick else 240.0)

    harness.header("footprint")
    node = harness.Node(harness.workdir(args.keep), "n1")
    rows = []
    try:
        node.start()
        rows.append(snapshot(node, "empty", 0))
        names = [f"fp{i:05d}" for i in range(jobs)]
        harness.create_jobs(
            node.url,
            [{"name": n, "schedule": "@manually", "command": "true"} for n in names],
        )
        rows.append(snapshot(node, f"{jobs} jobs", 0))

        began = time.monotonic()
        runs = 0
        for quarter in range(1, CHECKPOINTS + 1):
            runs += seed(node.url, names, budget / CHECKPOINTS)
            stored = min(runs, jobs * 100)
            rows.append(
                snapshot(
                    node, f"{jobs} jobs, {quarter}/{CHECKPOINTS} of the runs", stored
                )
            )
        rate = runs / (time.monotonic() - began - 2.0 * CHECKPOINTS)
        print(f"  {runs} manual runs at {rate:.0f}/s", file=sys.stderr)

        # Disk grows with each execution row; memory does not grow linearly
        # (raft entries are dropped at compaction, SQLite's cache is capped),
        # so only disk is extrapolated.
        disk_per = (float(rows[-1][3]) - float(rows[1][3])) * MB / max(1, stored)
        rows.append(
            [
                f"{jobs} jobs, extrapolated from disk per execution",
                TARGET_EXECUTIONS,
                "not linear",
                f"~{(float(rows[1][3]) * MB + disk_per * TARGET_EXECUTIONS) / MB:.0f}",
            ]
        )
        restarts = [time_restart(node, "SIGTERM"), time_restart(node, "SIGKILL")]
        seconds_to_1m = TARGET_EXECUTIONS / max(rate, 1e-9)
    finally:
        node.kill()

    harness.print_table(
        "memory and disk of one node",
        ["state", "executions stored", "RSS MB", "data dir MB"],
        rows,
    )
    print(
        f"\nmanual runs went at {rate:.0f}/s: 1,000,000 executions would take "
        f"{seconds_to_1m / 3600:.1f} h to make through the API; "
        f"{disk_per:.0f} B of disk per execution"
    )
    harness.print_table(
        f"restart with {jobs} jobs and {stored} executions",
        ["after", "/health answers s", "ready s", "RSS after MB"],
        restarts,
    )
    harness.footer()


if __name__ == "__main__":
    main()
