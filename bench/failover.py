"""Failover: kill -9 the leader of 3 servers and time the next run.

One ``@every 1s`` job runs RECORD_COMMAND. Several times over, the leader is
killed with SIGKILL at a random point of a second; the benchmark times how
long until a survivor names a new leader, until the next run starts (any
run, as a user watching the job sees it), and until the first run the new
leader must have fired itself (its slot is more than dcron's fire lead after
the kill, so the old leader cannot have committed it). The killed node is
then restarted and the cluster left to settle before the next kill.

Every second between the first and the last slot of the test is expected to
run exactly once; the table counts slots missed and doubled, and the
executions the API shows as ``interrupted`` (fired to the killed node).

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

JOB = "failover"
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
                    "name": JOB,
                    "schedule": "@every 1s",
                    "command": harness.record_command(record),
                }
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
        history = dcron.executions([JOB])[JOB]
    finally:
        dcron.close()

    runs = harness.read_records(record)
    slots = Counter(int(r.slot) for r in runs)
    first = min(s for s in slots if s > began + 1)
    last = max(s for s in slots if s < ended)
    expected = range(first, last + 1)
    missed = [s for s in expected if s not in slots]
    doubled = [s for s in expected if slots[s] > 1]
    interrupted = sum(1 for e in history if e["status"] == "interrupted")
    api_slots = Counter(
        e["scheduled_at"] for e in history if e["trigger"] == "schedule"
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
        f"{kills} kills of the leader, {len(expected)} slots",
        [
            "median elected s",
            "median next run s",
            "median next new-leader run s",
            "slots missed",
            "slots doubled",
            "interrupted (API)",
            "doubled (API)",
        ],
        [
            [
                f"{median[0]:.2f}",
                f"{median[1]:.2f}",
                f"{median[2]:.2f}",
                len(missed),
                len(doubled),
                interrupted,
                sum(1 for n in api_slots.values() if n > 1),
            ]
        ],
    )
    harness.footer()


if __name__ == "__main__":
    main()
