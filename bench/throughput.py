"""Throughput: the most runs per second sustained with every run recorded.

A rate R is offered as R jobs on ``@every 1s`` running ``true``. R passes when
every slot of the measuring window shows up in the API as a successful
execution within a short drain after the window, none twice. The search
doubles R until a rate fails, bisects between the last pass and the first
failure, then confirms the best passing rate over the full window (a minute;
a confirmation that fails steps down by a tenth and tries again). Each rate
runs on fresh nodes, so no backlog carries over.

Beside it, the machine's raw rate: ``/bin/sh -c true`` started back to back
from one Python thread (the physical limit), and from asyncio with 64
concurrent waits (how dcron and APScheduler start commands).

    .venv/bin/python -m bench.throughput [--quick] [--servers 1,3]
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import harness, targets

SETTLE_S = 3.0
DRAIN_S = 5.0
PROBE_WINDOW_S = 10
FIRST_RATE = 50
MAX_RATE = 3200
BISECT_STEPS = 4
STEP_DOWN = 0.9

TargetFactory = Callable[[Path], targets.Target]


@dataclass
class Trial:
    label: str
    rate: int
    window_s: int
    expected: int
    recorded: int
    doubled: int
    created_s: float
    unresponsive: bool = False

    @property
    def passed(self) -> bool:
        return self.recorded == self.expected and self.doubled == 0

    @property
    def achieved(self) -> float:
        return self.recorded / self.window_s

    def row(self) -> list[Any]:
        return [
            self.label,
            self.rate,
            self.window_s,
            self.expected,
            self.recorded,
            self.expected - self.recorded,
            self.doubled,
            f"{self.achieved:.0f}",
            "pass"
            if self.passed
            else ("FAIL: API unresponsive" if self.unresponsive else "FAIL"),
        ]


HEADERS = [
    "target",
    "offered runs/s",
    "window s",
    "slots",
    "recorded",
    "missing",
    "doubled",
    "recorded/s",
    "every run recorded",
]


def jobs_for(rate: int, prefix: str = "tp") -> list[dict[str, Any]]:
    return [
        {"name": f"{prefix}{i:05d}", "schedule": "@every 1s", "command": "true"}
        for i in range(rate)
    ]


def trial(make: TargetFactory, rate: int, window_s: int, keep: bool) -> Trial:
    """Offer ``rate`` runs/s to a fresh target for ``window_s`` seconds."""
    base = harness.workdir(keep)
    target = make(base)
    unresponsive = False
    created_s = 0.0
    begin = end = 0
    counts: Counter[tuple[str, float]] = Counter()
    try:
        target.start()
        bodies = jobs_for(rate)
        created_s = target.add_jobs(bodies)
        begin = math.ceil(time.time() + SETTLE_S)
        end = begin + window_s
        time.sleep(max(0.0, end + DRAIN_S - time.time()))
        counts = target.finished([b["name"] for b in bodies])
    except (harness.Unresponsive, RuntimeError, TimeoutError, OSError):
        # A node too busy to answer within a minute has failed the rate.
        unresponsive = True
    finally:
        target.close()
    in_window = {key: n for key, n in counts.items() if begin <= key[1] < end}
    trial = Trial(
        label=target.label,
        rate=rate,
        window_s=window_s,
        expected=rate * window_s,
        recorded=len(in_window),
        doubled=sum(1 for n in in_window.values() if n > 1),
        created_s=created_s,
        unresponsive=unresponsive,
    )
    print(f"  {trial.label} at {rate}/s: {trial.row()[-1]}", file=sys.stderr)
    return trial


def search(
    make: TargetFactory, quick: bool, keep: bool, window_s: int
) -> tuple[list[Trial], Trial | None]:
    """Every trial run, and the best rate confirmed over ``window_s``."""
    trials: list[Trial] = []
    if quick:
        # One probe: a smoke test that the pipeline records runs at all.
        trials.append(trial(make, 50, window_s, keep))
        return trials, trials[0] if trials[0].passed else None

    best, worst = 0, None
    rate = FIRST_RATE
    while rate <= MAX_RATE:
        trials.append(trial(make, rate, PROBE_WINDOW_S, keep))
        if not trials[-1].passed:
            worst = rate
            break
        best = rate
        rate *= 2
    if worst is not None:
        low, high = best, worst
        for _ in range(BISECT_STEPS):
            middle = (low + high) // 2
            if middle in (low, high):
                break
            trials.append(trial(make, middle, PROBE_WINDOW_S, keep))
            if trials[-1].passed:
                low = middle
            else:
                high = middle
        best = low

    while best > 0:
        confirmed = trial(make, best, window_s, keep)
        trials.append(confirmed)
        if confirmed.passed:
            return trials, confirmed
        best = int(best * STEP_DOWN)
    return trials, None


def main() -> None:
    parser = harness.arguments(__doc__.splitlines()[0])
    parser.add_argument("--servers", help="comma-separated cluster sizes")
    args = parser.parse_args()
    sizes = [int(x) for x in args.servers.split(",")] if args.servers else [1, 3]
    window = 5 if args.quick else 60

    harness.header("throughput")
    raw = harness.raw_spawn_rate(2.0 if args.quick else 10.0)
    raw_async = harness.asyncio_spawn_rate(2.0 if args.quick else 10.0)

    results = []
    all_trials = []
    for size in sizes:
        trials, best = search(
            lambda base, size=size: targets.Dcron(base, size),
            args.quick,
            args.keep,
            window,
        )
        all_trials += trials
        results.append((trials[0].label, best))

    harness.print_table("every trial", HEADERS, [t.row() for t in all_trials])
    summary(raw, raw_async, results, window, args.quick)
    harness.footer()


def summary(
    raw: float,
    raw_async: float,
    results: list[tuple[str, Trial | None]],
    window: int,
    quick: bool = False,
) -> None:
    rows: list[list[Any]] = [
        ["`/bin/sh -c true`, back to back from Python", f"{raw:.0f}", "1.00"],
        [
            "the same from asyncio, 64 at once",
            f"{raw_async:.0f}",
            f"{raw_async / raw:.2f}",
        ],
    ]
    for label, best in results:
        rate = best.achieved if best is not None else 0.0
        what = "one probe at 50/s (quick)" if quick else "every run recorded"
        rows.append([f"{label}, {what}", f"{rate:.0f}", f"{rate / raw:.2f}"])
    harness.print_table(
        f"sustained runs/s over {window} s", ["what", "runs/s", "of raw"], rows
    )


if __name__ == "__main__":
    main()
