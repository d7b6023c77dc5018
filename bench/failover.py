"""Failover: kill -9 the leader of 3 servers and time the next run.

Two ``@every 1s`` jobs run RECORD_COMMAND: one with the default catch-up
policy (``latest``), one with ``all``. Several times over, the leader is
killed with SIGKILL at a random point of a second; the benchmark times how
long until a survivor names a new leader, until the next run starts (any
run, as a user watching the job sees it), and until the first run the new
leader must have fired itself (its slot is more than dcron's fire lead after
the kill, so the old leader cannot have committed it). The killed node is
then restarted and the cluster left to settle before the next kill.

Every second between the first and the last slot of the test is expected to
run exactly once for the ``all`` job; the table counts, for each job, slots
missed and doubled, and the executions the API shows as ``lost`` (slots the
policy settled without running: with ``latest``, all but the newest of the
slots no leader fired) and ``interrupted`` (fired to the killed node).

    .venv/bin/python -m bench.failover [--quick] [--kills N]
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections import Counter
from typing import Any

from bench import harness, targets
from dcron.scheduler import FIRE_LEAD_S

JOB = "failover"  # catchup latest, the default
JOB_ALL = "failover-all"
CATCHUP = {JOB: "latest", JOB_ALL: "all"}
SETTLE_S = 5.0
NEXT_RUN_TIMEOUT_S = 60.0


def new_leader(cluster: harness.Cluster, old: harness.Node) -> harness.Node:
    def named() -> harness.Node | None:
        leader = cluster.leader()
        return leader if leader is not None and leader is not old else None

    return harness.wait_until(named, 60, "a new leader", interval=0.01)


def first_run_after(record: Any, after: float, slot_after: float) -> float:
    def found() -> float | None:
        started = [
            r.started
            for r in harness.read_records(record)
            if r.started > after and r.slot > slot_after
        ]
        return min(started) if started else None

    return harness.wait_until(
        found, NEXT_RUN_TIMEOUT_S, "a run after the kill", interval=0.01
    )


def records(path: Any, name: str) -> list[harness.Run]:
    return [r for r in harness.read_records(path) if r.job == name]


def main() -> None:
    parser = harness.arguments(__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int)
    args = parser.parse_args()
    kills = args.kills or (2 if args.quick else 7)
    settle = 3.0 if args.quick else SETTLE_S

    harness.header("failover")
    base = harness.workdir(args.keep)
    record = base / "record.log"
    dcron = targets.Dcron(base, 3, ("--executions-per-job", "1000"))
    rows = []
    try:
        dcron.start()
        dcron.add_jobs(
            [
                {
                    "name": name,
                    "schedule": "@every 1s",
                    "command": harness.record_command(record),
                    "catchup": catchup,
                }
                for name, catchup in CATCHUP.items()
            ]
        )
        began = time.time()
        harness.wait_until(lambda: len(harness.read_records(record)) >= 3, 30, "runs")

        for kill in range(1, kills + 1):
            old = dcron.cluster.leader()
            assert old is not None
            time.sleep(random.random())
            killed_at = time.time()
            old.kill()
            elected = new_leader(dcron.cluster, old)
            elected_at = time.time()
            next_run = first_run_after(record, killed_at, 0)
            next_new = first_run_after(record, killed_at, killed_at + FIRE_LEAD_S)
            around = [
                r.lateness
                for r in harness.read_records(record)
                if killed_at - 1 <= r.slot <= next_new
            ]
            rows.append(
                [
                    kill,
                    old.name,
                    elected.name,
                    f"{elected_at - killed_at:.2f}",
                    f"{next_run - killed_at:.2f}",
                    f"{next_new - killed_at:.2f}",
                    f"{max(around, default=0.0):.2f}",
                ]
            )
            print(f"  kill {kill}: {rows[-1]}", file=sys.stderr)
            old.start(wait=False)
            old.wait_ready()
            time.sleep(settle)

        ended = time.time()
        time.sleep(2.0)
        history = dcron.executions([JOB, JOB_ALL])
    finally:
        dcron.close()

    every = Counter(int(r.slot) for r in harness.read_records(record))
    first = min(s for s in every if s > began + 1)
    last = max(s for s in every if s < ended)
    expected = range(first, last + 1)
    counts = []
    for name, catchup in CATCHUP.items():
        slots = Counter(int(r.slot) for r in records(record, name))
        api = history[name]
        api_slots = Counter(
            e["scheduled_at"] for e in api if e["trigger"] == "schedule"
        )
        counts.append(
            [
                f"{name} (catchup {catchup})",
                sum(1 for s in expected if s not in slots),
                sum(1 for s in expected if slots[s] > 1),
                sum(1 for e in api if e["status"] == "lost"),
                sum(1 for e in api if e["status"] == "interrupted"),
                sum(1 for n in api_slots.values() if n > 1),
            ]
        )

    harness.print_table(
        "each kill (seconds after the kill)",
        [
            "kill",
            "killed",
            "new leader",
            "elected s",
            "next run s",
            "next run fired by the new leader s",
            "latest run around the kill s",
        ],
        rows,
    )
    median = [statistics.median(float(r[i]) for r in rows) for i in (3, 4, 5)]
    harness.print_table(
        f"{kills} kills of the leader",
        ["median elected s", "median next run s", "median next new-leader run s"],
        [[f"{m:.2f}" for m in median]],
    )
    harness.print_table(
        f"{len(expected)} slots, each expected once",
        [
            "job",
            "slots missed",
            "slots doubled",
            "lost (API)",
            "interrupted (API)",
            "doubled (API)",
        ],
        counts,
    )
    harness.footer()


if __name__ == "__main__":
    main()
