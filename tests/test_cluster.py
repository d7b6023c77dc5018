"""Clusters of real server processes on loopback: forming, serving, surviving."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from typing import Any

from conftest import ROOT, Cluster, NodeProcess, job, wait_until

KEY = "k" * 43


def comparable_jobs(node: NodeProcess) -> list[dict[str, Any]]:
    """A node's jobs without ``next``, which moves with the clock."""
    return [
        {k: v for k, v in j.items() if k != "next"}
        for j in node.client.get("/jobs").json
    ]


def slots(node: NodeProcess, name: str) -> list[float]:
    return [
        datetime.fromisoformat(r["scheduled_at"]).timestamp()
        for r in node.client.executions(name)
        if r["trigger"] == "schedule"
    ]


class TestForming:
    def test_three_servers_elect_one_leader_that_all_agree_on(self, make_cluster):
        cluster = make_cluster(3)
        leader = cluster.leader()
        members = leader.client.get("/members").json
        assert sorted(m["name"] for m in members) == ["n1", "n2", "n3"]
        assert [m["name"] for m in members if m["role"] == "leader"] == [leader.name]
        assert {m["status"] for m in members} == {"alive"}
        wait_until(
            lambda: all(
                isinstance(m["last_applied"], int)
                for m in leader.client.get("/members").json
            )
        )
        for node in cluster.nodes:
            assert node.client.get("/leader").json["name"] == leader.name
            info = node.info()
            assert info["raft"]["state"] == ("leader" if node is leader else "follower")
            assert info["raft"]["commit_index"] >= 1

    def test_a_write_on_a_follower_is_read_back_at_once_and_seen_by_all(
        self, make_cluster
    ):
        cluster = make_cluster(3)
        follower = cluster.followers()[0]
        created = follower.client.post("/jobs", job("from-follower", owner="f"))
        assert created.status == 201, created
        assert follower.client.get("/jobs/from-follower").json["owner"] == "f"
        for node in cluster.nodes:
            wait_until(lambda n=node: n.client.get("/jobs/from-follower").status == 200)
        toggled = follower.client.post("/jobs/from-follower/toggle").json
        assert toggled["disabled"] is True

    def test_runs_spread_over_the_followers(self, make_cluster):
        # The leader places runs on itself only when no other node matches: a
        # run it placed on itself would be lost with it.
        cluster = make_cluster(3)
        leader = cluster.leader()
        client = leader.client
        client.post("/jobs", job("spread", schedule="@every 1s"))
        wait_until(lambda: len(client.finished("spread")) >= 6, timeout=15)
        client.post("/jobs/spread/toggle")
        nodes = {r["node_name"] for r in client.finished("spread")}
        assert nodes == {"n1", "n2", "n3"} - {leader.name}

    def test_a_run_for_every_matching_node_includes_the_leader(self, make_cluster):
        cluster = make_cluster(3, "--tag", "role=all")
        client = cluster.leader().client
        tags = {"role": "all"}
        client.post("/jobs", job("everywhere", schedule="@every 1s", tags=tags))
        runs = wait_until(
            lambda: (
                len(client.finished("everywhere")) >= 3
                and client.finished("everywhere")
            ),
            timeout=15,
        )
        client.post("/jobs/everywhere/toggle")
        assert {r["node_name"] for r in runs} == {"n1", "n2", "n3"}


class TestFaults:
    def test_killing_the_leader_moves_scheduling_without_running_a_slot_twice(
        self, make_cluster
    ):
        cluster = make_cluster(3)
        old = cluster.leader()
        # Runs go to followers only, so that no run dies with the leader.
        follower = cluster.followers()[0]
        tags = follower.info()["tags"]
        assert tags == {}
        old.client.post("/jobs", job("failover", schedule="@every 1s"))
        wait_until(lambda: len(slots(old, "failover")) >= 3, timeout=10)

        old.kill()
        killed_at = time.time()
        new = cluster.leader(timeout=10)
        assert new is not old
        # The new leader fires a slot after the kill within 3 s of it.
        wait_until(
            lambda: any(s > killed_at for s in slots(new, "failover")), timeout=10
        )
        first_after = min(s for s in slots(new, "failover") if s > killed_at)
        assert first_after - killed_at < 3.5
        wait_until(
            lambda: len([s for s in slots(new, "failover") if s > killed_at]) >= 3,
            timeout=10,
        )
        new.client.post("/jobs/failover/toggle")

        fired = sorted(slots(new, "failover"))
        assert len(fired) == len(set(fired)), "a slot fired twice"
        # Whole seconds from the first slot to the last: at most the slots of
        # one failover may be missing (the catch-up rule runs the newest).
        expected = range(int(fired[0]), int(fired[-1]) + 1)
        missing = sorted(set(expected) - {int(s) for s in fired})
        assert len(missing) <= 3, missing
        assert new.info()["scheduler"]["running"] is True

    def test_a_killed_node_restarts_and_converges(self, make_cluster):
        cluster = make_cluster(3)
        victim = cluster.followers()[0]
        victim.kill()
        writer = cluster.leader()
        for i in range(5):
            writer.client.post("/jobs", job(f"while-down-{i}", owner=str(i)))
        writer.client.post("/jobs/while-down-0/run")
        wait_until(lambda: writer.client.finished("while-down-0"))
        writer.client.delete("/jobs/while-down-4")

        victim.start()
        wait_until(lambda: comparable_jobs(victim) == comparable_jobs(writer), 15)
        assert victim.client.executions("while-down-0") == writer.client.executions(
            "while-down-0"
        )
        applied = writer.info()["raft"]["last_applied"]
        wait_until(lambda: victim.info()["raft"]["last_applied"] >= applied)

    def test_a_write_without_quorum_fails_fast_with_503(self, make_cluster):
        cluster = make_cluster(3)
        cluster.leader().client.post("/jobs", job("before-quorum-loss"))
        survivor = cluster.followers()[0]
        wait_until(
            lambda: survivor.client.get("/jobs/before-quorum-loss").status == 200
        )
        for node in cluster.nodes:
            if node is not survivor:
                node.kill()

        def refused() -> Any:
            started = time.monotonic()
            response = survivor.client.post("/jobs", job("no-quorum"))
            return response.status == 503 and (response, time.monotonic() - started)

        response, took = wait_until(refused, timeout=20, interval=0.2)
        assert response.json["error"].startswith("no leader")
        assert took < 2.0
        assert survivor.client.get("/jobs/before-quorum-loss").status == 200
        assert survivor.client.get("/jobs/no-quorum").status == 404

    def test_a_node_far_behind_is_brought_up_by_a_snapshot(self, make_cluster):
        cluster = make_cluster(3, "--raft-compaction-entries", "40")
        lagging = cluster.followers()[0]
        lagging.kill()
        writer = cluster.leader()
        for i in range(120):
            assert writer.client.post("/jobs", job(f"snap-{i}")).status == 201
        snapshot = writer.data_dir / "raft.snapshot"
        wait_until(snapshot.exists, timeout=20)
        # The snapshot replaced the log it covers: the log stays short.
        wait_until(lambda: writer.info()["raft"]["log_entries"] < 100)

        lagging.start()
        wait_until(lambda: comparable_jobs(lagging) == comparable_jobs(writer), 30)
        assert len(comparable_jobs(lagging)) == 120

    def test_a_node_whose_store_is_full_stops_loudly_and_harms_no_other(
        self, make_cluster
    ):
        cluster = make_cluster(3)
        leader = cluster.leader()
        small = cluster.followers()[0]
        small.stop()
        small.extra += ["--store-max-bytes", "400000"]
        small.start()
        big = "x" * 60000
        for i in range(12):
            response = leader.client.post("/jobs", job(f"full-{i}", displayname=big))
            assert response.status == 201
        assert small.proc is not None
        assert small.proc.wait(30) == 70
        assert "store write failed" in small.log()
        others = [n for n in cluster.nodes if n is not small]
        for node in others:
            wait_until(lambda n=node: len(comparable_jobs(n)) == 12)
        assert others[0].client.post("/jobs", job("after-full")).status == 201

        small.extra = small.extra[:-2]
        small.start()
        wait_until(lambda: comparable_jobs(small) == comparable_jobs(leader), 20)


class TestMembership:
    def test_a_fourth_server_joins_and_one_leaves(self, make_cluster, tmp_path):
        cluster = make_cluster(3)
        leader = cluster.leader()
        leader.client.post("/jobs", job("before-join"))
        newcomer = NodeProcess(tmp_path / "n4.data", "n4")
        newcomer.extra = ["--join", cluster.nodes[0].raft_addr]
        cluster.nodes.append(newcomer)
        newcomer.start()

        assert newcomer.client.get("/jobs/before-join").status == 200
        wait_until(
            lambda: (
                {m["name"]: m["status"] for m in leader.client.get("/members").json}
                == dict.fromkeys(["n1", "n2", "n3", "n4"], "alive")
            )
        )
        newcomer.client.post("/jobs", job("from-newcomer"))
        wait_until(lambda: leader.client.get("/jobs/from-newcomer").status == 200)

        leaver = cluster.followers()[0]
        result = subprocess.run(
            [
                sys.executable,
                str(ROOT / "dcron.py"),
                "leave",
                "--address",
                leaver.client.base,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert leaver.proc is not None
        assert leaver.proc.wait(30) == 0
        remaining = [n for n in cluster.nodes if n is not leaver]

        def left() -> bool:
            members = remaining[0].client.get("/members").json
            return {m["name"]: m["status"] for m in members}[leaver.name] == "left"

        wait_until(left, timeout=15)
        writer = Cluster.leader(cluster)
        assert writer.client.post("/jobs", job("after-leave")).status == 201
        raft = writer.info()["raft"]
        assert raft["state"] == "leader"

    def test_a_dead_server_is_removed_from_any_node(self, make_cluster):
        cluster = make_cluster(3)
        dead = cluster.followers()[0]
        dead.kill()
        other = next(n for n in cluster.running() if n is not cluster.leader())
        result = subprocess.run(
            [
                sys.executable,
                str(ROOT / "dcron.py"),
                "members",
                "--address",
                other.client.base,
                "remove",
                dead.name,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        members = {m["name"]: m for m in other.client.get("/members").json}
        assert members[dead.name]["status"] == "left"
        # Two servers are now the whole cluster: one more loss keeps no quorum,
        # but both alive still commit.
        assert other.client.post("/jobs", job("two-left")).status == 201
        missing = other.client.request("DELETE", "/members/nobody")
        assert missing.status == 404

    def test_a_server_with_the_wrong_key_is_refused_and_says_so(
        self, make_cluster, tmp_path
    ):
        cluster = make_cluster(3, "--encrypt", KEY)
        leader = cluster.leader()
        assert leader.client.post("/jobs", job("encrypted")).status == 201
        intruder = NodeProcess(tmp_path / "bad.data", "intruder")
        intruder.extra = ["--join", cluster.nodes[0].raft_addr, "--encrypt", "w" * 43]
        intruder.start(wait=False)
        assert intruder.proc is not None
        assert intruder.proc.wait(30) == 1
        assert "refused this node's encryption key" in intruder.log()
        names = {m["name"] for m in leader.client.get("/members").json}
        assert names == {"n1", "n2", "n3"}

    def test_a_server_with_the_right_key_joins(self, make_cluster, tmp_path):
        cluster = make_cluster(3, "--encrypt", KEY)
        friend = NodeProcess(tmp_path / "ok.data", "friend")
        friend.extra = ["--join", cluster.nodes[1].raft_addr, "--encrypt", KEY]
        cluster.nodes.append(friend)
        friend.start()
        cluster.leader().client.post("/jobs", job("for-friend"))
        wait_until(lambda: friend.client.get("/jobs/for-friend").status == 200)
