"""The schedulers under test, behind one small interface.

A target is started, given jobs (dcron job bodies), asked which runs it
recorded, and killed. ``Dcron`` is one node or a cluster of servers driven
over HTTP; ``Apscheduler`` is APScheduler 3 in its own process
(bench/apscheduler_runner.py) running the same commands the same way.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from bench import harness

SUCCESS = "success"
# Longer than this to create a workload's jobs counts as a failure of the run.
CREATE_BUDGET_S = 300.0


class Target(Protocol):
    label: str

    def start(self) -> None: ...
    def add_jobs(self, bodies: list[dict[str, Any]]) -> float: ...
    def finished(self, names: list[str]) -> Counter[tuple[str, float]]: ...
    def pids(self) -> list[int]: ...
    def close(self) -> None: ...


def slot_of(text: str | None) -> float | None:
    if text is None:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Dcron:
    """``servers`` dcron servers on loopback (1 is a single node)."""

    def __init__(self, base: Path, servers: int, extra: tuple[str, ...] = ()) -> None:
        self.cluster = harness.Cluster(base, servers, extra)
        self.label = "dcron, 1 node" if servers == 1 else f"dcron, {servers} servers"

    def start(self) -> None:
        self.cluster.start()

    def add_jobs(self, bodies: list[dict[str, Any]]) -> float:
        return harness.create_jobs(self.cluster.url, bodies, budget_s=CREATE_BUDGET_S)

    def executions(self, names: list[str]) -> dict[str, list[dict[str, Any]]]:
        return harness.executions(self.cluster.url, names)

    def finished(self, names: list[str]) -> Counter[tuple[str, float]]:
        """(job, slot) of every successful run the API shows, with its count."""
        counts: Counter[tuple[str, float]] = Counter()
        for name, rows in self.executions(names).items():
            for row in rows:
                if row["status"] == SUCCESS and row["trigger"] == "schedule":
                    slot = slot_of(row["scheduled_at"])
                    assert slot is not None
                    counts[(name, slot)] += 1
        return counts

    def pids(self) -> list[int]:
        return [n.pid for n in self.cluster.nodes if n.running()]

    def close(self) -> None:
        self.cluster.kill()


class Apscheduler:
    """APScheduler 3 (AsyncIOScheduler) in a process of its own."""

    label = "APScheduler 3"

    def __init__(self, base: Path) -> None:
        self.base = base
        self.jobs_path = base / "aps-jobs.json"
        self.finished_path = base / "aps-finished.log"
        self.log_path = base / "aps.log"
        self.proc: Any = None

    def start(self) -> None:
        """Nothing to start yet: the runner starts with its jobs."""

    def add_jobs(self, bodies: list[dict[str, Any]]) -> float:
        # APScheduler has no API; its jobs are given at start, as a user's
        # script would add them in code.
        began = time.monotonic()
        self.jobs_path.write_text(json.dumps(bodies))
        self.proc = harness.spawn(
            [
                sys.executable,
                "-m",
                "bench.apscheduler_runner",
                str(self.jobs_path),
                str(self.finished_path),
            ],
            self.log_path,
            cwd=harness.ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        ready = self.base / "aps-jobs.json.ready"
        harness.wait_until(ready.exists, 60, "apscheduler runner ready")
        return time.monotonic() - began

    def finished(self, names: list[str]) -> Counter[tuple[str, float]]:
        counts: Counter[tuple[str, float]] = Counter()
        wanted = set(names)
        try:
            text = self.finished_path.read_text()
        except FileNotFoundError:
            return counts
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] in wanted and parts[2] == "0":
                counts[(parts[0], float(parts[1]))] += 1
        return counts

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
