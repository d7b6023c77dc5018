"""Fire lateness: how long after its scheduled instant each run really starts.

N jobs on second-level schedules each run RECORD_COMMAND, which appends the
job's name, its slot (``DCRON_SCHEDULED_AT``) and the wall clock at the moment
the command runs. Lateness is that time minus the slot. Every slot of the
measuring window is expected once: a slot with no line is missed, one with
two lines doubled.

Cron fires on whole seconds, so runs come in bursts; the k-th run of a burst
cannot start before k processes were spawned. The same run measures limit(k),
the time Python needs to start k ``/bin/sh -c true`` back to back, and checks
the issue's targets: the first run of a slot within 5 ms of it, and the k-th
within 1.5 x limit(k) + 5 ms.

Workloads: up to 100 jobs, half ``@every 1s`` and half ``*/2 * * * * *``
(bursts of N on even seconds, N/2 on odd ones); above 100, job i fires at
second i mod 60 of every minute (``S * * * * *``), N/60 runs per second.

    .venv/bin/python -m bench.lateness [--quick] [--jobs 100,1000] [--servers 1,3]
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import harness, targets

FIRST_RUN_TARGET_S = 0.005
KTH_FACTOR = 1.5
KTH_SLACK_S = 0.005
SETTLE_S = 3.0  # after the last job is created, before the window opens
DRAIN_S = 3.0  # after the window closes, for late runs to record themselves
BURST_JOBS = 100  # at most this many jobs use the bursty workload


def workload(count: int, record: Path, prefix: str = "late") -> list[dict[str, Any]]:
    command = harness.record_command(record)
    bodies = []
    for i in range(count):
        if count <= BURST_JOBS:
            expression = "@every 1s" if i % 2 == 0 else "*/2 * * * * *"
        else:
            expression = f"{i % 60} * * * * *"
        bodies.append(
            {"name": f"{prefix}{i:05d}", "schedule": expression, "command": command}
        )
    return bodies


def slots(expression: str, begin: int, end: int) -> list[int]:
    """Whole-second slots of the benchmark's expressions in [begin, end)."""
    if expression.startswith("@every "):
        step = int(expression.split()[1].removesuffix("s"))
        return [s for s in range(begin, end) if s % step == 0]
    second = expression.split()[0]
    if second.startswith("*/"):
        step = int(second[2:])
        return [s for s in range(begin, end) if s % 60 % step == 0]
    return [s for s in range(begin, end) if s % 60 == int(second)]


def share(part: int, whole: int) -> str:
    """A percentage that never rounds a miss away: 99.96% prints as 99.9%."""
    if part == whole:
        return "100%"
    return f"{math.floor(1000 * part / max(1, whole)) / 10:.1f}%"


def limit_at(limit: list[float], k: int) -> float:
    """limit(k), extrapolated at the mean spawn cost past the measured burst."""
    if k <= len(limit):
        return limit[k - 1]
    per_spawn = limit[-1] / len(limit)
    return limit[-1] + (k - len(limit)) * per_spawn


def command_floor(burst: int, rounds: int = 3) -> tuple[float, float]:
    """Lateness of RECORD_COMMAND itself spawned back to back from Python at an
    instant: (first run, burst-th run), medians. The instrument's own floor."""
    firsts, lasts = [], []
    base = harness.workdir()
    for round_ in range(rounds):
        path = base / f"floor{round_}.log"
        command = harness.record_command(path)
        slot = time.time()
        text = datetime.fromtimestamp(slot, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        env = {**os.environ, "DCRON_SCHEDULED_AT": text, "DCRON_JOB_NAME": "floor"}
        procs = [
            subprocess.Popen(["/bin/sh", "-c", command], env=env) for _ in range(burst)
        ]
        for proc in procs:
            proc.wait()
        late = sorted(run.started - slot for run in harness.read_records(path))
        firsts.append(late[0])
        lasts.append(late[-1])
        time.sleep(0.2)
    return statistics.median(firsts), statistics.median(lasts)


@dataclass
class Outcome:
    label: str
    jobs: int
    window_s: int
    created_s: float
    expected: int
    missed: int
    doubled: int
    lateness: list[float]
    first: list[float]  # per slot: the earliest run's lateness
    kth_ok: int
    worst_kth_ratio: float  # lateness(k) / (1.5 limit(k) + 5 ms), worst run
    api_gap: float | None = None  # median command time - API started_at

    def row(self) -> list[Any]:
        runs = len(self.lateness)
        on_time = sum(f <= FIRST_RUN_TARGET_S for f in self.first)
        return [
            self.label,
            self.jobs,
            f"{self.expected / self.window_s:.0f}",
            self.expected,
            self.missed,
            self.doubled,
            harness.ms(harness.percentile(self.lateness, 50)),
            harness.ms(harness.percentile(self.lateness, 99)),
            harness.ms(max(self.lateness, default=float("nan"))),
            harness.ms(harness.percentile(self.first, 99)),
            share(on_time, len(self.first)),
            share(self.kth_ok, runs),
            f"{self.worst_kth_ratio:.1f}",
        ]


HEADERS = [
    "target",
    "jobs",
    "runs/s",
    "slots",
    "missed",
    "doubled",
    "p50 ms",
    "p99 ms",
    "max ms",
    "first-of-slot p99 ms",
    "slots with first <= 5 ms",
    "runs with k-th <= 1.5 limit(k)+5 ms",
    "worst k-th / target",
]


def measure(
    target: targets.Target,
    count: int,
    window_s: int,
    base: Path,
    limit: list[float],
) -> Outcome:
    """Run ``count`` jobs on ``target`` for ``window_s`` seconds and judge them."""
    record = base / f"record-{count}.log"
    bodies = workload(count, record)
    target.start()
    created_s = target.add_jobs(bodies)

    begin = math.ceil(time.time() + SETTLE_S)
    end = begin + window_s
    time.sleep(max(0.0, end + DRAIN_S - time.time()))
    runs = [r for r in harness.read_records(record) if begin <= r.slot < end]

    expected = {
        (b["name"], s) for b in bodies for s in slots(b["schedule"], begin, end)
    }
    seen = Counter((r.job, r.slot) for r in runs)
    first_of: dict[tuple[str, float], float] = {}
    for run in runs:
        key = (run.job, run.slot)
        first_of[key] = min(first_of.get(key, math.inf), run.lateness)

    by_slot: dict[float, list[float]] = defaultdict(list)
    for (_, slot), late in first_of.items():
        by_slot[slot].append(late)
    kth_ok = 0
    worst = 0.0
    firsts = []
    for lates in by_slot.values():
        lates.sort()
        firsts.append(lates[0])
        for k, late in enumerate(lates, start=1):
            allowed = KTH_FACTOR * limit_at(limit, k) + KTH_SLACK_S
            kth_ok += late <= allowed
            worst = max(worst, late / allowed)

    outcome = Outcome(
        label=target.label,
        jobs=count,
        window_s=window_s,
        created_s=created_s,
        expected=len(expected),
        missed=len(expected - set(seen)),
        doubled=sum(1 for n in seen.values() if n > 1),
        lateness=list(first_of.values()),
        first=firsts,
        kth_ok=kth_ok,
        worst_kth_ratio=worst,
    )
    if isinstance(target, targets.Dcron):
        try:
            outcome.api_gap = api_gap(target, runs)
        except (TimeoutError, OSError):
            outcome.api_gap = None  # the node did not answer within a minute
    return outcome


def api_gap(target: targets.Dcron, runs: list[harness.Run]) -> float | None:
    """Median of (command's own time - the API's ``started_at``) over a sample."""
    names = sorted({r.job for r in runs})[:200]
    recorded = {(r.job, r.slot): r.started for r in runs}
    gaps = []
    for name, rows in target.executions(names).items():
        for row in rows:
            slot = targets.slot_of(row["scheduled_at"])
            started = targets.slot_of(row["started_at"])
            if (name, slot) in recorded and started is not None:
                gaps.append(recorded[(name, slot)] - started)
    return statistics.median(gaps) if gaps else None


def limits_table(
    limit: list[float],
    floor: tuple[float, float],
    burst: int,
    gated: list[float] | None,
) -> None:
    ks = [k for k in (1, 10, 17, 50, 100, 167, 200) if k <= len(limit)]
    rows = [
        ["limit(k) ms", *(harness.ms(limit[k - 1]) for k in ks)],
        [
            "target 1.5 limit(k) + 5 ms",
            *(harness.ms(KTH_FACTOR * limit[k - 1] + KTH_SLACK_S) for k in ks),
        ],
    ]
    if gated is not None:
        rows.append(
            [
                "timed command spawned ahead, released at once, ms",
                *(harness.ms(gated[k - 1]) for k in ks),
            ]
        )
    harness.print_table(
        "machine limit: k-th of a burst of `/bin/sh -c true` from Python",
        ["k", *map(str, ks)],
        rows,
    )
    print(
        f"\nthe timed command itself (sh, exec date) from Python: first run "
        f"{harness.ms(floor[0])} ms, {burst}-th {harness.ms(floor[1])} ms late"
    )


def main() -> None:
    parser = harness.arguments(__doc__.splitlines()[0])
    parser.add_argument("--jobs", help="comma-separated job counts")
    parser.add_argument("--servers", help="comma-separated cluster sizes")
    parser.add_argument("--window", type=int, help="seconds measured per scenario")
    args = parser.parse_args()
    counts = [100] if args.quick else [100, 1000, 10000]
    if args.jobs:
        counts = [int(x) for x in args.jobs.split(",")]
    sizes = [int(x) for x in args.servers.split(",")] if args.servers else [1, 3]
    window = args.window or (5 if args.quick else 60)

    harness.header("fire lateness")
    burst = 100 if args.quick else 200
    limit = harness.spawn_limit(burst, rounds=3 if args.quick else 5)
    floor = command_floor(min(burst, 100))
    gated = None if args.quick else harness.gated_limit(burst)
    limits_table(limit, floor, min(burst, 100), gated)

    outcomes = []
    rows = []
    for count in counts:
        for size in sizes:
            base = harness.workdir(args.keep)
            target = targets.Dcron(base, size)
            try:
                outcome = measure(target, count, window, base, limit)
            except (harness.Unresponsive, RuntimeError) as exc:
                rows.append([target.label, count, f"FAIL: {exc}"])
            else:
                outcomes.append(outcome)
                rows.append(outcome.row())
            finally:
                target.close()
            # Each row as it comes, so a later failure loses nothing.
            print(f"  done: {' | '.join(map(str, rows[-1]))}", file=sys.stderr)

    harness.print_table(
        f"lateness of the command's own start, {window} s window", HEADERS, rows
    )
    harness.print_table(
        "setup and the API's view",
        ["target", "jobs", "create s", "median command time - API started_at ms"],
        [
            [
                o.label,
                o.jobs,
                f"{o.created_s:.1f}",
                "-" if o.api_gap is None else harness.ms(o.api_gap),
            ]
            for o in outcomes
        ],
    )
    harness.footer()


if __name__ == "__main__":
    main()
