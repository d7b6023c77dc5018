"""Smoke tests of the benchmark suite: the quick runs of bench/ work end to end.

They check that each script drives real nodes and prints its table, not the
figures, which depend on the machine (docs/benchmarks.md has those).
"""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

SCRIPT_TIMEOUT_S = 300


def quick(script: str, *args: str) -> list[list[str]]:
    """Run ``bench.SCRIPT --quick`` and return the cells of its table rows."""
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{script}", "--quick", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in done.stdout.splitlines()
        if line.startswith("| dcron")
    ]


def test_throughput_probe_records_every_run() -> None:
    rows = quick("throughput", "--servers", "1")
    (probe, summary) = rows
    assert probe[0] == "dcron, 1 node" and probe[-1] == "pass"
    assert probe[3] == probe[4] and probe[5] == "0"  # slots == recorded
    assert float(summary[1]) > 0


def test_api_answers_every_request() -> None:
    rows = quick("api", "--servers", "1")
    operations = {row[1] for row in rows}
    assert {"job create", "job get", "executions list (100)"} <= operations
    assert any(op.startswith("job list") for op in operations)
    for row in rows:
        assert row[4] == "0", row  # errors
        assert int(row[3]) > 0  # requests
