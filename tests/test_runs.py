"""Where runs go and what happens to them: agents, tags, lost nodes, policies."""

from __future__ import annotations

import signal
import time
from collections import Counter
from datetime import datetime

from conftest import job, wait_until

FAST = ("--heartbeat-timeout", "3", "--retry-backoff", "0.2")


def stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def by_status(runs: list[dict]) -> Counter:
    return Counter(r["status"] for r in runs)


class TestAgents:
    def test_an_agent_runs_targeted_jobs_and_survives_a_leader_change(
        self, make_cluster
    ):
        cluster = make_cluster(3, *FAST)
        agent = cluster.add_agent("worker1", "--tag", "role=worker")
        leader = cluster.leader()

        def agent_member() -> dict | None:
            members = {m["name"]: m for m in leader.client.get("/members").json}
            return members.get("worker1")

        member = wait_until(agent_member)
        assert member["role"] == "agent"
        assert member["server"] is False
        assert member["tags"] == {"role": "worker"}
        assert agent.info()["role"] == "agent"

        leader.client.post(
            "/jobs", job("on-agent", schedule="@every 1s", tags={"role": "worker"})
        )
        wait_until(lambda: len(leader.client.finished("on-agent")) >= 2)
        leader.kill()
        killed_at = time.time()
        new = cluster.leader()
        wait_until(
            lambda: any(
                stamp(r["scheduled_at"]) > killed_at + 1
                for r in new.client.finished("on-agent")
            ),
            timeout=15,
        )
        new.client.post("/jobs/on-agent/toggle")
        runs = [r for r in new.client.executions("on-agent") if r["status"] != "lost"]
        assert {r["node_name"] for r in runs} == {"worker1"}

    def test_an_agent_serves_reads_and_forwards_writes(self, make_cluster):
        cluster = make_cluster(1, *FAST)
        agent = cluster.add_agent("reader")
        assert agent.client.post("/jobs", job("via-agent")).status == 201
        server = cluster.nodes[0]
        assert server.client.get("/jobs/via-agent").status == 200

    def test_running_output_is_read_from_the_node_running_it(self, make_cluster):
        cluster = make_cluster(1, *FAST)
        cluster.add_agent("talker", "--tag", "role=t")
        server = cluster.nodes[0]
        server.client.post(
            "/jobs", job("live", tags={"role": "t"}, command="echo first; sleep 3")
        )
        server.client.post("/jobs/live/run")

        def live_output() -> dict | None:
            for run in server.client.executions("live"):
                one = server.client.get(f"/jobs/live/executions/{run['id']}").json
                if one["status"] == "running" and one["output"] == "first\n":
                    return one
            return None

        run = wait_until(live_output)
        assert run["node_name"] == "talker"


class TestTags:
    def test_tag_counts_pick_that_many_nodes_and_spread_the_load(self, make_cluster):
        cluster = make_cluster(1, *FAST)
        for i in range(3):
            cluster.add_agent(f"web{i}", "--tag", "role=web", "--tag", "dc=x")
        server = cluster.nodes[0]
        server.client.post(
            "/jobs",
            job(
                "two-of-three", schedule="@every 1s", tags={"role": "web:2", "dc": "x"}
            ),
        )
        server.client.post("/jobs", job("all-web", tags={"role": "web"}))
        server.client.post("/jobs", job("untagged"))
        server.client.post("/jobs", job("nowhere", tags={"role": "db"}))
        server.client.post("/jobs/all-web/run")
        server.client.post("/jobs/untagged/run")
        server.client.post("/jobs/nowhere/run")

        wait_until(lambda: len(server.client.finished("two-of-three")) >= 8, 20)
        server.client.post("/jobs/two-of-three/toggle")
        runs = server.client.finished("two-of-three")
        per_slot: dict[str, set[str]] = {}
        for run in runs:
            per_slot.setdefault(run["scheduled_at"], set()).add(run["node_name"])
        complete = [nodes for nodes in per_slot.values() if len(nodes) == 2]
        assert len(complete) >= 3
        assert all(len(nodes) <= 2 for nodes in per_slot.values())
        assert {n for nodes in per_slot.values() for n in nodes} == {
            "web0",
            "web1",
            "web2",
        }

        everywhere = wait_until(
            lambda: (
                len(server.client.finished("all-web")) == 3
                and server.client.finished("all-web")
            )
        )
        assert {r["node_name"] for r in everywhere} == {"web0", "web1", "web2"}
        assert len({r["scheduled_at"] for r in everywhere}) == 1
        assert len(wait_until(lambda: server.client.finished("untagged"))) == 1

        (nowhere,) = wait_until(lambda: server.client.finished("nowhere"))
        assert nowhere["status"] == "failed"
        assert "no live node matches the job's tags" in nowhere["output"]
        assert server.client.get("/jobs/nowhere").json["error_count"] == 1


class TestLostNodes:
    def test_a_dead_agents_run_is_lost_and_retried_on_another_node(self, make_cluster):
        cluster = make_cluster(1, *FAST)
        agents = [cluster.add_agent(f"a{i}", "--tag", "role=w") for i in range(2)]
        server = cluster.nodes[0]
        command = (
            'echo "$DCRON_EXECUTION_ID"; [ "$DCRON_ATTEMPT" = 1 ] && sleep 60; true'
        )
        server.client.post(
            "/jobs", job("survivor", command=command, retries=1, tags={"role": "w:1"})
        )
        server.client.post("/jobs/survivor/run")
        first = wait_until(
            lambda: [
                r
                for r in server.client.executions("survivor")
                if r["status"] == "running"
            ]
        )[0]
        victim = next(a for a in agents if a.name == first["node_name"])
        victim.kill()

        def settled() -> list[dict] | None:
            runs = server.client.executions("survivor")
            done = [r for r in runs if r["status"] == "success"]
            return runs if done else None

        runs = wait_until(settled, timeout=30)
        lost = next(r for r in runs if r["id"] == first["id"])
        retry = next(r for r in runs if r["status"] == "success")
        assert lost["status"] == "lost"
        assert f"node {victim.name} stopped answering" in lost["output"]
        assert retry["attempt"] == 2
        assert retry["node_name"] != victim.name
        assert retry["group"] == first["id"]
        assert retry["output"].strip() == first["id"]
        stored = server.client.get("/jobs/survivor").json
        assert stored["lost_count"] == 1
        assert stored["error_count"] == 1
        assert stored["success_count"] == 1

    def test_a_frozen_agent_that_finishes_a_lost_run_is_not_counted_twice(
        self, make_cluster
    ):
        cluster = make_cluster(1, *FAST)
        agent = cluster.add_agent("sleepy", "--tag", "role=s")
        server = cluster.nodes[0]
        server.client.post(
            "/jobs", job("frozen", command="sleep 5", tags={"role": "s"})
        )
        server.client.post("/jobs/frozen/run")
        wait_until(
            lambda: server.client.get("/jobs/frozen").json["status"] == "running"
        )
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGSTOP)
        try:
            (run,) = wait_until(lambda: server.client.finished("frozen"), timeout=20)
            assert run["status"] == "lost"
        finally:
            agent.proc.send_signal(signal.SIGCONT)
        # The process finished long ago; the agent reports it once thawed.
        wait_until(lambda: agent.info()["ready"])
        wait_until(
            lambda: (
                server.client.get("/").json["raft"]["last_applied"]
                >= agent.info()["raft"]["last_applied"]
            )
        )
        stored = server.client.get("/jobs/frozen").json
        assert (stored["success_count"], stored["error_count"]) == (0, 1)
        (run,) = server.client.executions("frozen")
        assert run["status"] == "lost"


class TestConcurrency:
    """A job due every second whose command takes 2.5 s."""

    def overrun(self, client, name: str, policy: str) -> list[dict]:
        client.post(
            "/jobs",
            job(name, schedule="@every 1s", command="sleep 2.5", concurrency=policy),
        )
        wait_until(lambda: len(client.finished(name)) >= 4, timeout=20)
        client.post(f"/jobs/{name}/toggle")
        wait_until(lambda: all(r["finished_at"] for r in client.executions(name)), 10)
        return sorted(client.executions(name), key=lambda r: r["scheduled_at"])

    def test_allow_overlaps_runs(self, client):
        runs = self.overrun(client, "over-allow", "allow")
        assert by_status(runs)["success"] == len(runs)
        first, second = runs[0], runs[1]
        assert stamp(second["started_at"]) < stamp(first["finished_at"])

    def test_forbid_skips_while_one_is_open(self, client):
        runs = self.overrun(client, "over-forbid", "forbid")
        counts = by_status(runs)
        assert counts["skipped"] >= 2 and counts["success"] >= 1
        ran = [r for r in runs if r["status"] == "success"]
        for earlier, later in zip(ran, ran[1:], strict=False):
            assert stamp(later["started_at"]) >= stamp(earlier["finished_at"])

    def test_replace_terminates_the_open_run_then_starts(self, client):
        runs = self.overrun(client, "over-replace", "replace")
        replaced = [r for r in runs if "replaced by a newer run" in r["output"]]
        assert len(replaced) >= 2
        assert all(r["success"] is False for r in replaced)
        for earlier, later in zip(runs, runs[1:], strict=False):
            if earlier in replaced:
                assert stamp(earlier["finished_at"]) <= stamp(later["started_at"]) + 0.5


class TestCatchUp:
    def test_each_policy_across_a_leader_outage(self, make_node):
        node = make_node()
        client = node.client
        for mode in ("latest", "all", "skip"):
            client.post(
                "/jobs",
                job(
                    f"cu-{mode}",
                    schedule="@every 1s",
                    catchup=mode,
                    catchup_window="1h",
                ),
            )
        wait_until(
            lambda: all(
                len(client.finished(f"cu-{m}")) >= 2 for m in ("latest", "all", "skip")
            )
        )
        assert node.stop() == 0
        stopped_at = time.time()
        wait_until(lambda: time.time() > stopped_at + 4, timeout=10)
        restarted_at = time.time()
        node.start()
        wait_until(lambda: time.time() > restarted_at + 3, timeout=10)
        for mode in ("latest", "all", "skip"):
            node.client.post(f"/jobs/cu-{mode}/toggle")

        def gap(mode: str) -> tuple[list[dict], list[dict]]:
            runs = node.client.executions(f"cu-{mode}")
            inside = [
                r for r in runs if stopped_at < stamp(r["scheduled_at"]) < restarted_at
            ]
            return (
                [r for r in inside if r["status"] != "lost"],
                [r for r in inside if r["status"] == "lost"],
            )

        ran, lost = gap("all")
        assert len(ran) >= 3 and lost == []
        assert [r["scheduled_at"] for r in ran] == sorted(
            (r["scheduled_at"] for r in ran), reverse=True
        )
        ran, lost = gap("latest")
        assert len(ran) <= 1 and len(ran) + len(lost) >= 3
        assert all("catchup is latest" in r["output"] for r in lost)
        ran, lost = gap("skip")
        assert ran == [] and len(lost) >= 3
        assert all("catchup is skip" in r["output"] for r in lost)


class TestRetries:
    def test_a_leader_change_mid_backoff_neither_loses_nor_doubles_the_retry(
        self, make_cluster
    ):
        cluster = make_cluster(3, "--retry-backoff", "4")
        leader = cluster.leader()
        leader.client.post("/jobs", job("patient", command="exit 3", retries=1))
        leader.client.post("/jobs/patient/run")
        wait_until(lambda: leader.client.finished("patient"))
        leader.kill()

        new = cluster.leader()
        runs = wait_until(
            lambda: (
                len(new.client.finished("patient")) == 2
                and new.client.finished("patient")
            ),
            timeout=20,
        )
        first, retry = sorted(runs, key=lambda r: r["attempt"])
        assert (first["attempt"], retry["attempt"]) == (1, 2)
        assert retry["trigger"] == "retry"
        assert retry["group"] == first["id"]
        assert stamp(retry["started_at"]) >= stamp(first["finished_at"]) + 4
        # Nothing else is owed: no third run appears.
        settle = time.monotonic()
        wait_until(lambda: time.monotonic() > settle + 2, timeout=5)
        assert len(new.client.executions("patient")) == 2
