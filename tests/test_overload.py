"""A node past its capacity slows down instead of wedging.

The scheduler fires a bounded batch per loop turn and settles slots it reached
too late by each job's catch-up policy, so a stalled node resumes with every
slot accounted for once: run, or recorded as lost with the reason.
"""

from __future__ import annotations

import signal
import time
from datetime import datetime

from conftest import job, wait_until

STALL_S = 8.0  # longer than scheduler.BEHIND_S


def slot_of(execution: dict) -> float:
    return datetime.fromisoformat(
        execution["scheduled_at"].replace("Z", "+00:00")
    ).timestamp()


def test_a_stalled_scheduler_settles_old_slots_by_catch_up(make_node):
    node = make_node()
    client = node.client
    client.post("/jobs", job("steady", schedule="@every 1s"))
    wait_until(lambda: len(client.finished("steady")) >= 2, timeout=10)

    # A node whose loop is held for seconds comes back far behind its slots.
    assert node.proc is not None
    node.proc.send_signal(signal.SIGSTOP)
    resumed_after = time.time() + STALL_S
    try:
        wait_until(lambda: time.time() >= resumed_after, timeout=STALL_S + 5)
    finally:
        node.proc.send_signal(signal.SIGCONT)

    def settled() -> list[dict] | None:
        runs = client.executions("steady")
        lost = [r for r in runs if r["status"] == "lost"]
        after = [r for r in runs if slot_of(r) > resumed_after + 1]
        return runs if lost and after else None

    runs = wait_until(settled, timeout=20)
    client.post("/jobs/steady/toggle")

    lost = [r for r in runs if r["status"] == "lost"]
    assert all("behind this slot; catchup is latest" in r["output"] for r in lost)
    # Every slot from the first to the last is there exactly once: run or lost.
    slots = sorted(slot_of(r) for r in runs)
    assert len(slots) == len(set(slots))
    assert slots == [slots[0] + i for i in range(len(slots))]
    info = client.get("/").json
    assert info["scheduler"]["running"]
    assert "behind job steady" in node.log()
