"""Side by side: the lateness and throughput workloads on one dcron node and on
APScheduler 3, in the same run, with the ratio.

APScheduler runs in its own process (bench/apscheduler_runner.py) with an
AsyncIOScheduler, starting each command with ``/bin/sh -c`` from asyncio as
dcron does. It keeps jobs and runs in memory only: no API, no store, no
replication, so it is the bar a single-process scheduler sets, not a like for
like distributed cron. Its runs are counted from its own log of finished
runs; dcron's through the API.

    .venv/bin/python -m bench.sidebyside [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench import harness, lateness, targets, throughput


def dcron(base: Path) -> targets.Target:
    return targets.Dcron(base, 1)


def aps(base: Path) -> targets.Target:
    return targets.Apscheduler(base)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def main() -> None:
    parser = harness.arguments(__doc__.splitlines()[0])
    args = parser.parse_args()
    counts = [100] if args.quick else [100, 1000]
    window = 5 if args.quick else 60
    tp_window = 5 if args.quick else 60

    harness.header("side by side with APScheduler")
    limit = harness.spawn_limit(100, rounds=3)

    late_rows, ratios = [], []
    for count in counts:
        pair = []
        for make in (dcron, aps):
            base = harness.workdir(args.keep)
            target = make(base)
            try:
                pair.append(lateness.measure(target, count, window, base, limit))
            finally:
                target.close()
            print(f"  lateness: {target.label}, {count} jobs", file=sys.stderr)
        late_rows += [o.row() for o in pair]
        p99 = [harness.percentile(o.lateness, 99) for o in pair]
        p50 = [harness.percentile(o.lateness, 50) for o in pair]
        ratios.append([f"lateness p50, {count} jobs", ratio(p50[1], p50[0])])
        ratios.append([f"lateness p99, {count} jobs", ratio(p99[1], p99[0])])
    harness.print_table(f"lateness, {window} s window", lateness.HEADERS, late_rows)

    tp_rows, best = [], []
    for make in (dcron, aps):
        trials, confirmed = throughput.search(make, args.quick, args.keep, tp_window)
        tp_rows += [t.row() for t in trials]
        best.append(confirmed.achieved if confirmed else 0.0)
    harness.print_table("throughput trials", throughput.HEADERS, tp_rows)
    what = "offered 50/s (quick)" if args.quick else "sustained runs/s"
    ratios.append([f"throughput, {what}", ratio(best[0], best[1])])

    harness.print_table(
        "ratio: APScheduler lateness / dcron lateness, dcron runs/s / APScheduler"
        " runs/s (above 1: dcron ahead)",
        ["figure", "ratio"],
        ratios,
    )
    harness.footer()


if __name__ == "__main__":
    main()
