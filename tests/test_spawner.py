"""A node's process spawner (dcron.spawnd) under faults, on real nodes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from conftest import job, wait_until

from bench.harness import children


def gone(pid: int) -> bool:
    # A zombie counts as gone: the container's init may never reap it.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def spawner_of(node) -> int:
    """The node's one child process: its spawner, once it has started."""
    [pid] = wait_until(lambda: children(node.proc.pid))
    return pid


class TestSpawner:
    def test_a_node_starts_its_spawner_as_its_only_child(self, make_node):
        node = make_node()
        spawner = spawner_of(node)

        cmdline = Path(f"/proc/{spawner}/cmdline").read_bytes().split(b"\0")
        assert b"dcron.spawnd" in b" ".join(cmdline)
        node.client.post("/jobs", job("quick", command="sleep 1"))
        node.client.post("/jobs/quick/run")
        wait_until(lambda: node.client.executions("quick"))
        # The command is the spawner's child, not the node's.
        assert children(node.proc.pid) == [spawner]
        command = wait_until(lambda: children(spawner))
        assert len(command) == 1

    def test_a_killed_spawner_is_replaced_and_its_run_recorded(self, make_node):
        node = make_node()
        client = node.client
        first = spawner_of(node)
        client.post("/jobs", job("slow", command="echo begun; sleep 1; exit 0"))
        client.post("/jobs/slow/run")
        wait_until(
            lambda: [r for r in client.executions("slow") if r["output"] == "begun\n"]
        )

        os.kill(first, signal.SIGKILL)

        [run] = wait_until(lambda: client.finished("slow"), timeout=10)
        assert run["exit_code"] == 255
        assert run["status"] == "failed"
        assert run["output"] == (
            "begun\n[dcron: exit status lost: the process spawner exited]\n"
        )
        client.post("/jobs", job("after", command="echo fine"))
        client.post("/jobs/after/run")
        [later] = wait_until(lambda: client.finished("after"), timeout=10)
        assert (later["status"], later["output"]) == ("success", "fine\n")
        assert spawner_of(node) != first
        assert f"process spawner (pid {first}) lost" in node.log()

    def test_the_spawner_leaves_with_its_killed_node(self, make_node):
        node = make_node()
        spawner = spawner_of(node)

        node.kill()

        wait_until(lambda: gone(spawner), timeout=10)

    def test_the_spawner_leaves_with_its_stopped_node(self, make_node):
        node = make_node()
        spawner = spawner_of(node)

        assert node.stop() == 0

        wait_until(lambda: gone(spawner), timeout=10)
