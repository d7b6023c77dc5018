"""API latency and requests per second, from 1 and from 32 concurrent clients.

Operations: job create (POST /jobs), job get, job list with every job in one
answer (10,000 jobs; 500 with --quick), and the executions list of a job
holding 100 executions. On 3 servers every request goes to a follower, since
writes must work through any node. The client is asyncio with one keep-alive
connection per concurrent client; it runs on the same two cores as the
nodes, so figures at 32 clients include its own CPU.

    .venv/bin/python -m bench.api [--quick] [--servers 1,3]
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import Any

from bench import harness, targets

HEADERS = [
    "target",
    "operation",
    "clients",
    "requests",
    "errors",
    "p50 ms",
    "p99 ms",
    "req/s",
]
EXECUTIONS = 100


def measure(
    label: str,
    base: str,
    operation: str,
    requests: list[tuple[str, str, Any]],
    clients: int,
    ok: int = 200,
) -> list[Any]:
    began = time.perf_counter()
    results = asyncio.run(harness.run_requests(base, requests, clients))
    took = time.perf_counter() - began
    latencies = [latency for _, latency in results]
    errors = sum(1 for status, _ in results if status != ok)
    print(f"  {label}: {operation} x{clients} done", file=sys.stderr)
    return [
        label,
        operation,
        clients,
        len(results),
        errors,
        harness.ms(harness.percentile(latencies, 50)),
        harness.ms(harness.percentile(latencies, 99)),
        f"{len(results) / took:.0f}",
    ]


def job(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "schedule": "@manually",
        "command": "true",
        "metadata": {"team": "bench"},
    }


def seed_executions(base: str, name: str) -> None:
    """Run ``name`` by hand until it holds EXECUTIONS finished executions."""
    asyncio.run(
        harness.run_requests(
            base, [("POST", f"/jobs/{name}/run", None)] * EXECUTIONS, clients=8
        )
    )

    def finished() -> bool:
        rows = harness.executions(base, [name])[name]
        return len(rows) >= EXECUTIONS and all(r["finished_at"] for r in rows)

    harness.wait_until(finished, 120, "executions recorded")


def bench_target(servers: int, quick: bool, keep: bool) -> list[list[Any]]:
    total = 500 if quick else 10000
    single = 50 if quick else 500
    reads = (200, 1000) if quick else (1000, 10000)
    lists = (5, 16) if quick else (20, 64)

    dcron = targets.Dcron(harness.workdir(keep), servers)
    rows = []
    try:
        dcron.start()
        leader = dcron.cluster.leader()
        node = next(n for n in dcron.cluster.nodes if n is not leader or servers == 1)
        base = node.url
        label = dcron.label + ("" if servers == 1 else ", via a follower")

        names = [f"api{i:05d}" for i in range(total)]
        creates = [("POST", "/jobs", job(n)) for n in names]
        rows.append(measure(label, base, "job create", creates[:single], 1, ok=201))
        rows.append(measure(label, base, "job create", creates[single:], 32, ok=201))

        gets = [("GET", f"/jobs/{random.choice(names)}", None) for _ in range(reads[1])]
        rows.append(measure(label, base, "job get", gets[: reads[0]], 1))
        rows.append(measure(label, base, "job get", gets, 32))

        listing = ("GET", "/jobs", None)
        what = f"job list ({total} jobs)"
        rows.append(measure(label, base, what, [listing] * lists[0], 1))
        rows.append(measure(label, base, what, [listing] * lists[1], 32))

        seed_executions(base, names[0])
        history = ("GET", f"/jobs/{names[0]}/executions", None)
        what = f"executions list ({EXECUTIONS})"
        rows.append(measure(label, base, what, [history] * reads[0], 1))
        rows.append(measure(label, base, what, [history] * reads[1], 32))
    finally:
        dcron.close()
    return rows


def main() -> None:
    parser = harness.arguments(__doc__.splitlines()[0])
    parser.add_argument("--servers", help="comma-separated cluster sizes")
    args = parser.parse_args()
    sizes = [int(x) for x in args.servers.split(",")] if args.servers else [1, 3]

    harness.header("api")
    rows = []
    for size in sizes:
        rows += bench_target(size, args.quick, args.keep)
    harness.print_table("latency and rate per operation", HEADERS, rows)
    harness.footer()


if __name__ == "__main__":
    main()
