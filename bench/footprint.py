"""Footprint: a node's memory and disk with many jobs and executions, and the
time it takes to restart and serve from them.

One node gets 10,000 jobs (1,000 with --quick), then executions made the only
way a user can make them: runs of ``true`` by hand (POST /jobs/NAME/run, 32
clients, round robin over the jobs). A run costs a fire commit, a process and
a finish commit. The full run goes on until the node stores 1,000,000
executions (100 per job, the default ``--executions-per-job``), which takes
about half an hour on two cores; ``--executions`` asks for fewer, and
``--seconds`` caps the time, past which the table extrapolates the disk per
execution to 1,000,000 and says so. The stored count is read back from the
jobs' counters, not assumed. Memory is the node process's resident set
(VmRSS), its process spawner's (dcron.spawnd, the node's one child), and the
proportional set size of the two together, in which the pages they share
(the interpreter and its libraries) count once; disk is the whole data dir
(SQLite, WAL, raft journal and snapshot).

While the store grows the node compacts its raft log into a snapshot, a copy
of the whole store, every 20,000 entries (about every 10,000 runs). A second
table gives, for each quarter of the runs, the p99 and the longest of the
seeding's requests, each of which waits for a commit, beside the snapshots the
node logged and the longest of them: a snapshot that held up the raft thread
shows as requests as long as it.

Restart is timed twice: after SIGTERM (a clean stop) and after SIGKILL (the
journal is replayed), each until /health answers and until the node is ready
(caught up, leader elected, scheduler running).

    .venv/bin/python -m bench.footprint [--quick] [--executions N] [--seconds N]
"""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
import time
from typing import Any

from bench import harness

TARGET_EXECUTIONS = 1_000_000
KEEP = 100  # executions kept per job: the node's default --executions-per-job
MB = 1024 * 1024
CHECKPOINTS = 4
SNAPSHOT_LINE = re.compile(r"snapshot written in ([0-9.]+)s \((\d+) bytes\)")


def snapshot(node: harness.Node, label: str, executions: int) -> list[Any]:
    # Let WAL checkpoints and compaction settle a moment before measuring.
    time.sleep(2.0)
    return [
        label,
        executions,
        *memory(node),
        f"{harness.dir_bytes(node.data_dir) / MB:.1f}",
    ]


def memory(node: harness.Node) -> list[str]:
    used = node.memory()
    return [f"{n / MB:.0f}" for n in (used.node_rss, used.spawner_rss, used.pss)]


def seed(
    base: str, names: list[str], runs: int, deadline: float
) -> tuple[int, list[float]]:
    """Run jobs by hand, round robin, until ``runs`` were accepted or the
    monotonic ``deadline`` passes; return how many were accepted and every
    request's latency in seconds."""
    cycle = itertools.cycle(names)
    sent = itertools.count()

    def requests():  # type: ignore[no-untyped-def]
        while next(sent) < runs and time.monotonic() < deadline:
            yield ("POST", f"/jobs/{next(cycle)}/run", None)

    results = asyncio.run(harness.run_requests(base, requests(), clients=32))
    accepted = sum(1 for status, _ in results if status == 202)
    return accepted, [latency for _, latency in results]


def snapshots_logged(node: harness.Node) -> list[tuple[float, int]]:
    """(seconds, bytes) of every snapshot the node's log says it wrote."""
    try:
        text = node.log_path.read_text(errors="replace")
    except OSError:
        return []
    return [(float(m[1]), int(m[2])) for m in SNAPSHOT_LINE.finditer(text)]


def stored(node: harness.Node) -> int:
    """Executions the node keeps, from the jobs' counters: each job keeps its
    newest KEEP once every run it was given has finished."""

    def settled() -> list[dict[str, Any]] | None:
        status, jobs = harness.call(node.url, "GET", "/jobs")
        done = status == 200 and all(job["status"] != "running" for job in jobs)
        return jobs if done else None

    jobs = harness.wait_until(settled, 300, "runs finished", node, interval=0.5)
    return sum(min(KEEP, job["success_count"] + job["error_count"]) for job in jobs)


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
    return [how, f"{health_s:.2f}", f"{ready_s:.2f}", *memory(node)]


def main() -> None:
    parser = harness.arguments(__doc__.splitlines()[0])
    parser.add_argument(
        "--executions", type=int, help="executions to store (1,000,000 when full)"
    )
    parser.add_argument("--seconds", type=float, help="at most this long making runs")
    args = parser.parse_args()
    jobs = 1000 if args.quick else 10000
    wanted = min(args.executions or TARGET_EXECUTIONS, jobs * KEEP)
    budget = args.seconds or (5.0 if args.quick else 3600.0)

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
        deadline = began + budget
        runs = 0
        count = 0
        took = 0.0  # seeding only, not the pauses to count and measure
        growing = []
        snapshots_before = len(snapshots_logged(node))
        for quarter in range(1, CHECKPOINTS + 1):
            seeding = time.monotonic()
            accepted, latencies = seed(
                node.url, names, wanted * quarter // CHECKPOINTS - runs, deadline
            )
            runs += accepted
            took += time.monotonic() - seeding
            count = stored(node)
            label = f"{jobs} jobs, {quarter}/{CHECKPOINTS} of the runs"
            rows.append(snapshot(node, label, count))
            written = snapshots_logged(node)[snapshots_before:]
            snapshots_before += len(written)
            growing.append(
                [
                    label,
                    count,
                    len(latencies),
                    harness.ms(harness.percentile(latencies, 99)),
                    harness.ms(max(latencies, default=float("nan"))),
                    len(written),
                    f"{max((s for s, _ in written), default=0.0):.1f}",
                    f"{max((b for _, b in written), default=0) / MB:.0f}",
                ]
            )
        rate = runs / took
        print(f"  {runs} manual runs at {rate:.0f}/s", file=sys.stderr)

        # Disk grows with each execution row. Memory does not grow with them
        # (raft entries are dropped at compaction, SQLite's cache is capped),
        # so when the budget ran out first only disk is extrapolated.
        disk_per = (float(rows[-1][-1]) - float(rows[1][-1])) * MB / max(1, count)
        if count < TARGET_EXECUTIONS:
            disk = float(rows[1][-1]) * MB + disk_per * TARGET_EXECUTIONS
            rows.append(
                [
                    f"{jobs} jobs, extrapolated from disk per execution",
                    TARGET_EXECUTIONS,
                    *["not measured"] * 3,
                    f"~{disk / MB:.0f}",
                ]
            )
        restarts = [time_restart(node, "SIGTERM"), time_restart(node, "SIGKILL")]
    finally:
        node.kill()

    harness.print_table(
        "memory and disk of one node",
        [
            "state",
            "executions stored",
            "node RSS MB",
            "spawner RSS MB",
            "both PSS MB",
            "data dir MB",
        ],
        rows,
    )
    harness.print_table(
        "while the store grew: the seeding's requests and the node's snapshots",
        [
            "state",
            "executions stored",
            "requests",
            "p99 ms",
            "longest ms",
            "snapshots written",
            "longest snapshot s",
            "largest snapshot MB",
        ],
        growing,
    )
    print(
        f"\n{runs} manual runs at {rate:.0f}/s in {took:.0f} s; "
        f"{disk_per:.0f} B of disk per stored execution"
    )
    harness.print_table(
        f"restart with {jobs} jobs and {count} executions",
        ["after", "/health answers s", "ready s", "node RSS", "spawner RSS", "PSS"],
        restarts,
    )
    harness.footer()


if __name__ == "__main__":
    main()
