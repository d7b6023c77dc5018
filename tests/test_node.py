"""Starting, configuring, stopping and restarting a node process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
from conftest import ROOT, job, wait_until

from dcron import config
from dcron.errors import ConfigError


def dcron(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "dcron.py"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


class TestCommandLine:
    def test_version_prints_the_version(self):
        result = dcron("version")
        assert result.returncode == 0
        assert result.stdout.startswith("dcron 0.")

    def test_help_documents_every_flag(self):
        result = dcron("agent", "--help")
        assert result.returncode == 0
        for setting in config.SETTINGS:
            assert f"--{setting.name}" in result.stdout
            assert setting.env in result.stdout
        assert "--config" in result.stdout

    @pytest.mark.parametrize(
        "args,flag",
        [
            (["--http-addr", "127.0.0.1:99999"], "--http-addr"),
            (["--http-addr", "nocolon"], "--http-addr"),
            (["--raft-addr", "127.0.0.1:x"], "--raft-addr"),
            (["--join", "127.0.0.1:0"], "--join"),
            (["--tag", "novalue"], "--tag"),
            (["--tag", "=x"], "--tag"),
            (["--bootstrap-expect", "-1"], "--bootstrap-expect"),
            (["--bootstrap-expect", "three"], "--bootstrap-expect"),
            (["--log-level", "loud"], "--log-level"),
            (["--node-name", "bad name"], "--node-name"),
            (["--executions-per-job", "0"], "--executions-per-job"),
            (["--shutdown-grace", "soon"], "--shutdown-grace"),
            (["--data-dir", "/dev/null/dcron"], "--data-dir"),
            (["--config", "/no/such/file.toml"], "--config"),
        ],
    )
    def test_a_bad_flag_exits_non_zero_with_one_line_naming_it(self, args, flag):
        result = dcron("agent", "--server", *args)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"dcron: {flag}:")

    def test_a_bad_environment_value_names_the_flag(self):
        env = {"DCRON_HTTP_ADDR": "127.0.0.1:70000", "PATH": "/usr/bin:/bin"}
        result = dcron("agent", env=env)
        assert result.returncode == 2
        assert result.stderr.startswith("dcron: --http-addr:")


class TestSettings:
    def test_a_flag_beats_the_environment_which_beats_the_file(self, tmp_path):
        path = tmp_path / "dcron.toml"
        path.write_text(
            'node_name = "from-file"\ndata_dir = "file-dir"\nlog_level = "error"\n'
            'tags = { role = "web" }\nserver = true\n'
        )
        env = {"DCRON_NODE_NAME": "from-env", "DCRON_DATA_DIR": "env-dir"}
        settings = config.resolve({"config": str(path), "node_name": "from-flag"}, env)
        assert settings.node_name == "from-flag"
        assert settings.data_dir == "env-dir"
        assert settings.log_level == "error"
        assert settings.tags == {"role": "web"}
        assert settings.server is True

    def test_defaults_apply_when_nothing_is_set(self):
        settings = config.resolve({}, {})
        assert settings.http_addr == ("0.0.0.0", 8080)
        assert settings.data_dir == "dcron.data"
        assert settings.server is False
        assert settings.executions_per_job == 100
        assert settings.node_name

    def test_repeatable_settings_split_on_commas_in_the_environment(self):
        env = {"DCRON_JOIN": "10.0.0.1:6868,10.0.0.2:6868", "DCRON_TAG": "a=1,b=2"}
        settings = config.resolve({}, env)
        assert settings.join == ("10.0.0.1:6868", "10.0.0.2:6868")
        assert settings.tags == {"a": "1", "b": "2"}

    def test_an_unknown_key_in_the_file_is_refused(self, tmp_path):
        path = tmp_path / "dcron.toml"
        path.write_text('colour = "blue"\n')
        with pytest.raises(ConfigError, match="--config: unknown setting 'colour'"):
            config.resolve({"config": str(path)}, {})

    def test_the_settings_page_matches_the_table(self):
        page = (ROOT / "docs" / "settings.md").read_text()
        assert page == config.settings_page()

    def test_durations_are_read_as_seconds(self):
        assert config.resolve({"shutdown_grace": "1m30s"}, {}).shutdown_grace == 90
        assert config.resolve({"retry_backoff": "0.5"}, {}).retry_backoff == 0.5


class TestLifecycle:
    def test_sigterm_lets_a_running_job_finish_and_exits_zero(self, make_node):
        node = make_node("--shutdown-grace", "10")
        client = node.client
        client.post("/jobs", job("finishes", command="sleep 1; echo done"))
        client.post("/jobs/finishes/run")
        wait_until(lambda: client.get("/jobs/finishes").json["status"] == "running")
        assert node.stop() == 0

        node.start()
        (run,) = node.client.executions("finishes")
        assert run["status"] == "success"
        assert run["output"] == "done\n"

    def test_sigterm_stops_a_job_past_the_grace_period(self, make_node):
        node = make_node("--shutdown-grace", "1")
        client = node.client
        client.post("/jobs", job("endless", command="sleep 60"))
        client.post("/jobs/endless/run")
        wait_until(lambda: client.get("/jobs/endless").json["status"] == "running")
        started = datetime.now()
        assert node.stop() == 0
        assert (datetime.now() - started).total_seconds() < 15

        node.start()
        (run,) = node.client.executions("endless")
        assert run["status"] == "failed"
        assert "node shut down" in run["output"]

    def test_runs_held_for_their_slot_when_the_node_stops_are_interrupted(
        self, make_node, tmp_path
    ):
        # Fires commit half a second before the slot, and shell runs are then
        # spawned and held at their gate. A node stopping in between must not
        # run them, and records each as interrupted.
        node = make_node("--shutdown-grace", "2")
        client = node.client
        ran = tmp_path / "ran"
        for i in range(5):
            command = f"echo $DCRON_EXECUTION_ID >> {ran}"
            client.post("/jobs", job(f"held{i}", schedule="@every 1s", command=command))
        wait_until(lambda: ran.exists() and len(ran.read_text().split()) >= 5)
        # Three quarters into a second: the next slot's runs are held.
        now = time.time()
        stop_at = int(now) + 1.75 if now % 1 > 0.5 else int(now) + 0.75
        wait_until(lambda: time.time() >= stop_at, timeout=3)
        assert node.stop() == 0

        node.start()
        runs = [r for i in range(5) for r in node.client.executions(f"held{i}")]
        held = [r for r in runs if r["status"] == "interrupted"]
        assert held, runs
        started = set(ran.read_text().split())
        for run in held:
            assert "node n1 shut down before the run started" in run["output"]
            assert run["id"] not in started

    def test_a_restart_keeps_every_job_counter_and_execution(self, make_node):
        node = make_node()
        client = node.client
        client.post("/jobs", job("kept-a", owner="ops", metadata={"k": "v"}))
        client.post("/jobs", job("kept-b", command="exit 1", retries=1))
        client.post("/jobs/kept-a/run")
        client.post("/jobs/kept-b/run")
        wait_until(lambda: client.get("/jobs/kept-b").json["error_count"] == 2)
        wait_until(lambda: client.get("/jobs/kept-a").json["success_count"] == 1)
        jobs_before = client.get("/jobs").json
        runs_before = {n: client.executions(n) for n in ("kept-a", "kept-b")}
        assert node.stop() == 0

        node.start()
        assert node.client.get("/jobs").json == jobs_before
        for name, runs in runs_before.items():
            assert node.client.executions(name) == runs

    def test_kill_9_and_replay_apply_nothing_twice(self, make_node):
        node = make_node()
        client = node.client
        client.post("/jobs", job("replayed"))
        for _ in range(5):
            client.post("/jobs/replayed/run")
        wait_until(lambda: client.get("/jobs/replayed").json["success_count"] == 5)
        applied = client.get("/").json["raft"]["last_applied"]
        node.kill()

        node.start()
        info = node.client.get("/").json
        assert info["raft"]["last_applied"] >= applied
        stored = node.client.get("/jobs/replayed").json
        assert stored["success_count"] == 5
        assert len(node.client.executions("replayed")) == 5

    def test_kill_9_wherever_it_falls_among_compactions_loses_nothing(self, make_node):
        # A snapshot every 40 entries, so each kill falls somewhere in a cycle
        # of commands applied, a snapshot written and the log compacted. A
        # kill between the last two once made the restarted node cut its log
        # back to the snapshot, and skip its next commands as replays.
        node = make_node("--raft-compaction-entries", "40")
        names: set[str] = set()
        for cycle in range(8):
            for i in range(120):
                name = f"c{cycle}-{i}"
                assert node.client.post("/jobs", job(name)).status == 201
                names.add(name)
            assert node.info()["raft"]["log_entries"] < 100
            node.kill()

            node.start()
            listed = node.client.get("/jobs?_end=1000").json
            assert {j["name"] for j in listed} == names
            assert node.client.post("/jobs", job(f"after-{cycle}")).status == 201
            names.add(f"after-{cycle}")
        assert "snapshot written" in node.log_path.read_text()

    def test_a_run_open_at_kill_9_is_closed_as_interrupted(self, make_node):
        node = make_node()
        client = node.client
        client.post("/jobs", job("cutoff", command="sleep 30"))
        client.post("/jobs/cutoff/run")
        wait_until(lambda: client.get("/jobs/cutoff").json["status"] == "running")
        node.kill()

        node.start()
        (run,) = wait_until(lambda: node.client.finished("cutoff"))
        assert run["status"] == "interrupted"
        assert "restarted" in run["output"]
        assert node.client.get("/jobs/cutoff").json["error_count"] == 1

    def test_slots_missed_while_down_are_caught_up_once(self, make_node):
        node = make_node()
        client = node.client
        client.post("/jobs", job("catchup", schedule="@every 1s"))
        wait_until(lambda: len(client.finished("catchup")) >= 2)
        assert node.stop() == 0
        stopped_at = time.time()
        # Stay down across a few slots before starting again.
        wait_until(lambda: time.time() > stopped_at + 3, timeout=10)

        restarted_at = time.time()
        node.start()
        assert node.client.get("/").json["scheduler"]["caught_up"] == 1
        wait_until(lambda: len(node.client.finished("catchup")) >= 5, timeout=15)
        node.client.post("/jobs/catchup/toggle")
        runs = node.client.executions("catchup")
        ran = [stamp(r["scheduled_at"]) for r in runs if r["status"] != "lost"]
        lost = [r for r in runs if r["status"] == "lost"]
        assert len(ran) == len(set(ran))
        # Only the newest missed slot runs: the process starts at least 0.1 s
        # after restarted_at (an election), so older missed slots lie before
        # restarted_at - 1 and must not have run...
        assert [s for s in ran if stopped_at < s < restarted_at - 1] == []
        assert any(restarted_at - 1 <= s < restarted_at + 2 for s in ran)
        # ...but they are recorded as lost, with the reason, so every slot
        # from the first to the last is accounted for exactly once.
        assert lost and all(r["output"].startswith("lost: no leader") for r in lost)
        every = sorted(ran + [stamp(r["scheduled_at"]) for r in lost])
        assert every == [float(s) for s in range(int(every[0]), int(every[-1]) + 1)]
        assert node.client.get("/jobs/catchup").json["lost_count"] == len(lost)


def stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_writes_beyond_the_pending_command_bound_get_503(make_node):
    node = make_node("--max-pending-commands", "1")
    with ThreadPoolExecutor(max_workers=40) as pool:
        responses = list(
            pool.map(lambda i: node.client.post("/jobs", job(f"burst-{i}")), range(200))
        )
    refused = [i for i, r in enumerate(responses) if r.status == 503]
    accepted = [i for i, r in enumerate(responses) if r.status == 201]
    assert refused and accepted
    assert len(refused) + len(accepted) == 200
    assert responses[refused[0]].json == {"error": "too many pending commands"}
    stored = {j["name"] for j in node.client.get("/jobs").json}
    assert stored == {f"burst-{i}" for i in accepted}


def test_an_unencrypted_raft_address_beyond_loopback_is_warned_about(make_node):
    node = make_node(start=False)
    node.extra = ["--raft-addr", f"0.0.0.0:{node.raft_port}"]
    node.start()
    assert "is not loopback and --encrypt is not set" in node.log()


def test_ctrl_c_stops_the_node_like_sigterm(make_node):
    node = make_node()
    assert node.proc is not None
    node.proc.send_signal(signal.SIGINT)
    assert node.proc.wait(30) == 0
