"""Jobs that fire and run on a real node: schedules, processes, policies.

The shared node keeps 5 executions per job, 2048 bytes of output at each end,
and waits 0.2 s before a first retry (see conftest.node).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from conftest import job, wait_until


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class TestSchedules:
    def test_every_second_fires_on_whole_seconds_once_per_slot(self, client):
        client.post("/jobs", job("every1", schedule="@every 1s"))
        runs = wait_until(
            lambda: len(client.finished("every1")) >= 3 and client.finished("every1"),
            timeout=10,
        )
        client.post("/jobs/every1/toggle")
        slots = [parse(r["scheduled_at"]) for r in runs]
        assert all(slot.microsecond == 0 for slot in slots)
        assert len(set(slots)) == len(slots)
        for run in runs:
            assert run["trigger"] == "schedule"
            lateness = parse(run["started_at"]) - parse(run["scheduled_at"])
            assert timedelta(0) <= lateness < timedelta(seconds=1)

    def test_six_field_cron_takes_seconds_first(self, client):
        client.post("/jobs", job("cron6", schedule="*/2 * * * * *"))
        runs = wait_until(
            lambda: len(client.finished("cron6")) >= 2 and client.finished("cron6"),
            timeout=10,
        )
        client.post("/jobs/cron6/toggle")
        assert all(parse(r["scheduled_at"]).second % 2 == 0 for r in runs)

    def test_at_runs_once_at_its_time(self, client):
        at = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
        stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        created = client.post("/jobs", job("atonce", schedule=f"@at {stamp}")).json
        assert created["next"] == stamp
        (run,) = wait_until(lambda: client.finished("atonce"), timeout=10)
        assert run["scheduled_at"] == stamp
        assert client.get("/jobs/atonce").json["next"] is None

    def test_manually_never_fires_by_schedule(self, client):
        client.post("/jobs", job("manualonly", schedule="@manually"))
        assert client.get("/jobs/manualonly").json["next"] is None

    def test_expires_at_stops_a_job(self, client):
        expires = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
        client.post("/jobs", job("expiring", schedule="@every 1s", expires_at=expires))
        wait_until(lambda: client.get("/jobs/expiring").json["next"] is None, 10)
        count = len(client.executions("expiring"))
        assert 1 <= count <= 2
        wait_until(lambda: client.get("/").json["uptime_s"] > 0)
        assert all(
            parse(r["scheduled_at"]) <= parse(expires)
            for r in client.executions("expiring")
        )


class TestProcesses:
    def test_env_cwd_and_dcron_variables_reach_the_command(self, client, tmp_path):
        command = "pwd; echo $GREETING; echo $DCRON_JOB_NAME; echo $DCRON_SCHEDULED_AT"
        body = job(
            "envjob",
            executor_config={
                "command": command,
                "cwd": str(tmp_path),
                "env": {"GREETING": "hello"},
            },
        )
        client.post("/jobs", body)
        client.post("/jobs/envjob/run")
        (run,) = wait_until(lambda: client.finished("envjob"))
        lines = run["output"].splitlines()
        assert lines[:3] == [str(tmp_path), "hello", "envjob"]
        assert lines[3] == run["scheduled_at"]

    def test_dkron_env_string_is_accepted(self, client):
        body = job(
            "envstr", executor_config={"command": "echo $A-$B", "env": "A=1,B=2"}
        )
        client.post("/jobs", body)
        client.post("/jobs/envstr/run")
        (run,) = wait_until(lambda: client.finished("envstr"))
        assert run["output"] == "1-2\n"

    def test_stdout_and_stderr_are_captured_together(self, client):
        client.post("/jobs", job("both", command="echo out; echo err >&2; echo out2"))
        client.post("/jobs/both/run")
        (run,) = wait_until(lambda: client.finished("both"))
        assert run["output"] == "out\nerr\nout2\n"

    def test_output_keeps_head_and_tail_and_counts_the_rest(self, client):
        command = "printf HEAD; head -c 1000000 /dev/zero | tr '\\0' x; printf TAIL"
        client.post("/jobs", job("bigout", command=command))
        client.post("/jobs/bigout/run")
        (run,) = wait_until(lambda: client.finished("bigout"), timeout=20)
        assert run["output_truncated"] is True
        assert run["output"].startswith("HEAD")
        assert run["output"].endswith("TAIL")
        assert "bytes of output dropped" in run["output"]
        assert len(run["output"]) < 2 * 2048 + 200

    def test_timeout_kills_the_whole_process_group(self, client, tmp_path):
        pidfile = tmp_path / "grandchild.pid"
        command = f"sh -c 'sleep 60 & echo $! > {pidfile}; wait' ; echo never"
        body = job("slow", executor_config={"command": command, "timeout": "1s"})
        client.post("/jobs", body)
        client.post("/jobs/slow/run")
        (run,) = wait_until(lambda: client.finished("slow"), timeout=20)
        assert run["success"] is False
        assert "timed out after 1s" in run["output"]
        assert "never" not in run["output"]
        grandchild = int(pidfile.read_text())

        def gone() -> bool:
            try:
                os.kill(grandchild, 0)
            except ProcessLookupError:
                return True
            return False

        wait_until(gone, timeout=10)

    def test_a_command_that_cannot_start_fails_with_the_reason(self, client):
        body = job("nostart", executor_config={"command": "true", "cwd": "/no/such"})
        client.post("/jobs", body)
        client.post("/jobs/nostart/run")
        (run,) = wait_until(lambda: client.finished("nostart"))
        assert run["success"] is False
        assert "could not start" in run["output"]
        assert "/no/such" in run["output"]

    def test_counters_and_status_follow_outcomes(self, client):
        client.post("/jobs", job("counted", command="exit 0"))
        client.post("/jobs/counted/run")
        wait_until(lambda: client.get("/jobs/counted").json["success_count"] == 1)
        client.put("/jobs", job("counted", command="exit 1"))
        client.post("/jobs/counted/run")
        stored = wait_until(
            lambda: (j := client.get("/jobs/counted").json)["error_count"] == 1 and j
        )
        assert stored["status"] == "failed"
        assert stored["last_success"] is not None
        assert parse(stored["last_error"]) >= parse(stored["last_success"])

    def test_executions_kept_per_job_are_bounded(self, client):
        client.post("/jobs", job("bounded", command="echo $DCRON_EXECUTION_ID"))
        for _ in range(8):
            client.post("/jobs/bounded/run")
        wait_until(lambda: client.get("/jobs/bounded").json["success_count"] == 8, 20)
        runs = client.executions("bounded")
        assert len(runs) == 5
        outputs = {r["output"].strip() for r in runs}
        assert outputs == {r["id"] for r in runs}


class TestPolicies:
    def test_forbid_skips_a_run_while_one_is_open_and_records_it(self, client):
        body = job("forbidden", command="sleep 2", concurrency="forbid")
        client.post("/jobs", body)
        client.post("/jobs/forbidden/run")
        wait_until(lambda: client.get("/jobs/forbidden").json["status"] == "running")
        client.post("/jobs/forbidden/run")
        runs = wait_until(
            lambda: (
                len(client.finished("forbidden")) == 2 and client.finished("forbidden")
            ),
            timeout=15,
        )
        skipped = [r for r in runs if r["status"] == "skipped"]
        assert len(skipped) == 1
        assert "still running" in skipped[0]["output"]
        assert client.get("/jobs/forbidden").json["skip_count"] == 1

    def test_force_runs_despite_forbid(self, client):
        client.post("/jobs", job("forced", command="sleep 1", concurrency="forbid"))
        client.post("/jobs/forced/run")
        wait_until(lambda: client.get("/jobs/forced").json["status"] == "running")
        client.post("/jobs/forced/run?force=true")
        runs = wait_until(
            lambda: len(client.finished("forced")) == 2 and client.finished("forced"),
            timeout=15,
        )
        assert {r["status"] for r in runs} == {"success"}

    def test_allow_runs_overlapping(self, client):
        client.post("/jobs", job("overlap", command="sleep 1"))
        client.post("/jobs/overlap/run")
        client.post("/jobs/overlap/run")
        runs = wait_until(
            lambda: len(client.finished("overlap")) == 2 and client.finished("overlap"),
            timeout=15,
        )
        first, second = sorted(runs, key=lambda r: r["started_at"])
        assert parse(second["started_at"]) < parse(first["finished_at"])

    def test_retries_rerun_a_failure_with_growing_delay(self, client):
        client.post("/jobs", job("flaky", command="exit 2", retries=2))
        client.post("/jobs/flaky/run")
        runs = wait_until(
            lambda: len(client.finished("flaky")) == 3 and client.finished("flaky"),
            timeout=15,
        )
        runs.sort(key=lambda r: r["attempt"])
        assert [r["attempt"] for r in runs] == [1, 2, 3]
        assert [r["trigger"] for r in runs] == ["manual", "retry", "retry"]
        assert len({r["scheduled_at"] for r in runs}) == 1
        gap1 = parse(runs[1]["started_at"]) - parse(runs[0]["finished_at"])
        gap2 = parse(runs[2]["started_at"]) - parse(runs[1]["finished_at"])
        assert gap1 >= timedelta(seconds=0.2)
        assert gap2 >= timedelta(seconds=0.4)
        stored = client.get("/jobs/flaky").json
        assert stored["error_count"] == 3

    def test_retries_stop_at_the_first_success(self, client, tmp_path):
        marker = tmp_path / "tried"
        command = f"test -e {marker} || {{ touch {marker}; exit 1; }}"
        client.post("/jobs", job("recovers", command=command, retries=3))
        client.post("/jobs/recovers/run")
        wait_until(lambda: client.get("/jobs/recovers").json["success_count"] == 1)
        runs = client.finished("recovers")
        assert sorted(r["success"] for r in runs) == [False, True]

    def test_a_parent_success_runs_its_dependents(self, client):
        client.post("/jobs", job("parent-ok"))
        client.post("/jobs", job("child-a", schedule="", parent_job="parent-ok"))
        client.post("/jobs", job("child-b", parent_job="parent-ok"))
        client.post("/jobs/parent-ok/run")
        for child in ("child-a", "child-b"):
            (run,) = wait_until(lambda c=child: client.finished(c))
            assert run["trigger"] == "parent"

    def test_a_parent_failure_runs_no_dependents(self, client):
        client.post("/jobs", job("parent-bad", command="exit 1"))
        client.post("/jobs", job("child-never", parent_job="parent-bad"))
        client.post("/jobs/parent-bad/run")
        wait_until(lambda: client.finished("parent-bad"))
        client.post("/jobs", job("parent-bad-sibling"))
        client.post("/jobs/parent-bad-sibling/run")
        wait_until(lambda: client.finished("parent-bad-sibling"))
        assert client.executions("child-never") == []

    def test_an_ephemeral_job_is_deleted_after_its_first_success(self, client):
        client.post("/jobs", job("oneshot", ephemeral=True, command="exit 1"))
        client.post("/jobs/oneshot/run")
        wait_until(lambda: client.finished("oneshot"))
        assert client.get("/jobs/oneshot").status == 200
        client.put("/jobs", job("oneshot", ephemeral=True, command="true"))
        client.post("/jobs/oneshot/run")
        wait_until(lambda: client.get("/jobs/oneshot").status == 404)

    def test_running_output_can_be_read_while_the_job_runs(self, client):
        client.post("/jobs", job("chatty", command="echo started; sleep 3"))
        client.post("/jobs/chatty/run")
        run = wait_until(
            lambda: [
                r for r in client.executions("chatty") if r["output"] == "started\n"
            ],
            timeout=10,
        )[0]
        assert run["finished_at"] is None
        assert run["status"] == "running"


class TestBursts:
    def test_jobs_due_at_the_same_second_each_run_once_and_never_early(
        self, client, tmp_path
    ):
        names = [f"burst{i:02d}" for i in range(20)]
        for name in names:
            command = f'echo "$DCRON_SCHEDULED_AT $(date +%s%N)" >> {tmp_path / name}'
            client.post("/jobs", job(name, schedule="@every 1s", command=command))
        wait_until(
            lambda: all(len(client.finished(name)) >= 3 for name in names), timeout=30
        )
        for name in names:
            client.post(f"/jobs/{name}/toggle")
        wait_until(
            lambda: all(
                e["finished_at"] for name in names for e in client.executions(name)
            ),
            timeout=10,
        )

        started: dict[str, dict[str, int]] = {}
        for name in names:
            lines = (tmp_path / name).read_text().split()
            slots, stamps = lines[::2], [int(ns) for ns in lines[1::2]]
            assert len(set(slots)) == len(slots), f"{name} ran a slot twice"
            started[name] = dict(zip(slots, stamps, strict=True))
            for slot, ns in started[name].items():
                assert ns >= parse(slot).timestamp() * 1e9, f"{name} ran early"
            for run in client.finished(name):
                assert run["success"], run
                assert run["scheduled_at"] in started[name]
                assert parse(run["started_at"]) >= parse(run["scheduled_at"])
        shared = set.intersection(*(set(runs) for runs in started.values()))
        assert shared, "no second saw every job run"
