"""The command-line client verbs, run as processes against a real node, and the
backup and restore routes they use."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, NodeProcess, job, wait_until

SERVER_FIELDS = (
    "status",
    "next",
    "success_count",
    "error_count",
    "skip_count",
    "last_success",
    "last_error",
    "dependent_jobs",
)


def dcron(
    node: NodeProcess | None, *args: str, stdin: str = "", env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the CLI; ``node`` supplies --address unless it is None."""
    address = ["--address", node.client.base] if node is not None else []
    return subprocess.run(
        [sys.executable, str(ROOT / "dcron.py"), *args, *address],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        env=env,
    )


def write_json(tmp_path: Path, data: Any, name: str = "jobs.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.strip().splitlines()]


def user_fields(found: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        j["name"]: {k: v for k, v in j.items() if k not in SERVER_FIELDS} for j in found
    }


class TestJobs:
    def test_apply_creates_a_file_of_jobs_parents_first(self, node, tmp_path):
        path = write_json(
            tmp_path,
            [
                job("cli-child", parent_job="cli-parent", schedule=""),
                job("cli-parent", schedule="@daily", timezone="Europe/Berlin"),
            ],
        )
        result = dcron(node, "jobs", "apply", path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "cli-parent: created",
            "cli-child: created",
        ]
        assert node.client.get("/jobs/cli-child").json["parent_job"] == "cli-parent"

    def test_apply_takes_one_object_and_replaces_an_existing_job(self, node, tmp_path):
        node.client.post("/jobs", job("cli-replaced"))
        path = write_json(tmp_path, job("cli-replaced", owner="ops"))
        result = dcron(node, "jobs", "apply", path)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "cli-replaced: replaced\n"
        assert node.client.get("/jobs/cli-replaced").json["owner"] == "ops"

    def test_apply_reads_standard_input(self, node):
        body = json.dumps(job("cli-stdin"))
        result = dcron(node, "jobs", "apply", "-", stdin=body)
        assert result.returncode == 0, result.stderr
        assert node.client.get("/jobs/cli-stdin").status == 200

    def test_apply_stops_at_the_first_refused_job_naming_it(self, node, tmp_path):
        path = write_json(
            tmp_path,
            [job("cli-good"), job("cli-bad", schedule="not a schedule"), job("cli-n")],
        )
        result = dcron(node, "jobs", "apply", path)
        assert result.returncode == 1
        assert result.stderr.startswith("dcron: job cli-bad: schedule:")
        assert node.client.get("/jobs/cli-good").status == 200
        assert node.client.get("/jobs/cli-n").status == 404

    def test_list_prints_an_aligned_table_with_a_header(self, node):
        node.client.post("/jobs", job("cli-listed", schedule="@hourly"))
        result = dcron(node, "jobs", "list")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        header = lines[0].split()
        assert header[:4] == ["NAME", "SCHEDULE", "TIMEZONE", "STATE"]
        listed = next(line for line in lines if line.startswith("cli-listed "))
        assert listed.split()[1:4] == ["@hourly", "UTC", "enabled"]
        # Every row starts its columns where the header starts them.
        schedule_at = lines[0].index("SCHEDULE")
        assert all(line[schedule_at - 2 : schedule_at] == "  " for line in lines)

    def test_json_prints_the_api_answer(self, node):
        result = dcron(node, "jobs", "list", "--json")
        assert result.returncode == 0, result.stderr
        listed = json.loads(result.stdout)
        assert [j["name"] for j in listed] == [
            j["name"] for j in node.client.get("/jobs").json
        ]

    def test_get_shows_one_job_and_its_json(self, node):
        node.client.post("/jobs", job("cli-shown", owner="data"))
        result = dcron(node, "jobs", "get", "cli-shown")
        assert result.returncode == 0, result.stderr
        fields = dict(line.split(":", 1) for line in result.stdout.splitlines())
        assert fields["owner"].strip() == "data"
        as_json = json.loads(dcron(node, "jobs", "get", "cli-shown", "--json").stdout)
        assert as_json == node.client.get("/jobs/cli-shown").json

    def test_an_unknown_job_exits_1_with_the_api_error(self, node):
        result = dcron(node, "jobs", "get", "cli-nobody")
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr == "dcron: job cli-nobody not found\n"

    def test_run_starts_the_job_and_executions_lists_the_run(self, node):
        node.client.post("/jobs", job("cli-run", command="echo ran"))
        result = dcron(node, "jobs", "run", "cli-run")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "cli-run: run requested\n"
        wait_until(lambda: node.client.finished("cli-run"))

        table = rows(dcron(node, "executions", "cli-run").stdout)
        assert table[0] == [
            "ID",
            "STATUS",
            "TRIGGER",
            "ATTEMPT",
            "NODE",
            "STARTED",
            "TOOK",
            "EXIT",
        ]
        (run,) = table[1:]
        assert run[1:5] == ["success", "manual", "1", "n1"]
        assert run[-1] == "0"

    def test_executions_limit_keeps_the_newest(self, node):
        node.client.post("/jobs", job("cli-limited"))
        for count in (1, 2):
            node.client.post("/jobs/cli-limited/run")
            wait_until(lambda c=count: len(node.client.finished("cli-limited")) == c)
        newest = node.client.executions("cli-limited")[0]["id"]
        result = dcron(node, "executions", "cli-limited", "--limit", "1", "--json")
        assert result.returncode == 0, result.stderr
        assert [run["id"] for run in json.loads(result.stdout)] == [newest]

    def test_run_force_runs_a_forbid_job_while_it_is_running(self, node):
        node.client.post(
            "/jobs", job("cli-forced", command="sleep 10", concurrency="forbid")
        )
        assert dcron(node, "jobs", "run", "cli-forced").returncode == 0
        wait_until(
            lambda: node.client.get("/jobs/cli-forced").json["status"] == "running"
        )
        assert dcron(node, "jobs", "run", "cli-forced").returncode == 0
        assert dcron(node, "jobs", "run", "cli-forced", "--force").returncode == 0

        def statuses() -> list[str]:
            return sorted(e["status"] for e in node.client.executions("cli-forced"))

        assert wait_until(lambda: len(statuses()) == 3)
        assert statuses() == ["running", "running", "skipped"]

    def test_toggle_disables_and_enables(self, node):
        node.client.post("/jobs", job("cli-toggled"))
        assert dcron(node, "jobs", "toggle", "cli-toggled").stdout == (
            "cli-toggled: disabled\n"
        )
        assert node.client.get("/jobs/cli-toggled").json["disabled"] is True
        assert dcron(node, "jobs", "toggle", "cli-toggled").stdout == (
            "cli-toggled: enabled\n"
        )

    def test_delete_removes_the_job(self, node):
        node.client.post("/jobs", job("cli-deleted"))
        result = dcron(node, "jobs", "delete", "cli-deleted")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "cli-deleted: deleted\n"
        assert node.client.get("/jobs/cli-deleted").status == 404


class TestAddressAndExitCodes:
    def test_members_lists_this_node(self, node):
        result = dcron(node, "members")
        assert result.returncode == 0, result.stderr
        header, member = rows(result.stdout)
        assert header == ["NAME", "ROLE", "STATUS", "RAFT", "HTTP", "TAGS"]
        assert member[:3] == ["n1", "leader", "alive"]

    def test_removing_an_unknown_member_exits_1(self, node):
        result = dcron(node, "members", "remove", "nobody")
        assert result.returncode == 1
        assert result.stderr == "dcron: no member named nobody\n"

    def test_the_address_comes_from_the_environment(self, node):
        env = {**os.environ, "DCRON_ADDRESS": node.client.base.split("//")[1]}
        result = dcron(None, "members", "--json", env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)[0]["name"] == "n1"

    def test_the_address_may_come_before_the_verb(self, node):
        result = subprocess.run(
            [sys.executable, str(ROOT / "dcron.py"), "--address", node.client.base]
            + ["--json", "jobs", "list"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert isinstance(json.loads(result.stdout), list)

    def test_an_unreachable_node_exits_1_naming_the_address(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            address = f"http://127.0.0.1:{sock.getsockname()[1]}"
            result = dcron(None, "jobs", "list", "--address", address)
        assert result.returncode == 1
        assert result.stderr.startswith(f"dcron: cannot reach {address}:")

    @pytest.mark.parametrize(
        "args",
        [
            ["jobs"],
            ["jobs", "launch"],
            ["jobs", "get"],
            ["executions", "x", "--limit", "0"],
            ["jobs", "apply", "/no/such/file.json"],
        ],
    )
    def test_a_usage_error_exits_2(self, args):
        result = dcron(None, *args)
        assert result.returncode == 2
        assert result.stderr.strip()

    def test_a_file_that_is_not_json_is_a_usage_error(self, tmp_path):
        path = tmp_path / "jobs.json"
        path.write_text("{not json")
        result = dcron(None, "jobs", "apply", str(path))
        assert result.returncode == 2
        assert result.stderr.startswith(f"dcron: {path}: not valid JSON")


class TestBackupAndRestore:
    def test_backup_is_a_consistent_sqlite_copy_of_the_store(self, node):
        node.client.post("/jobs", job("bk-copied"))
        response = node.client.get("/backup")
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.body.startswith(b"SQLite format 3\0")
        assert "attachment" in response.headers["Content-Disposition"]

    def test_a_backup_restores_into_a_fresh_node(self, node, make_node, tmp_path):
        node.client.post("/jobs", job("bk-parent", schedule="@daily", owner="ops"))
        node.client.post("/jobs", job("bk-child", parent_job="bk-parent", schedule=""))
        node.client.post("/jobs/bk-parent/toggle")
        path = tmp_path / "dcron.db"
        saved = dcron(node, "backup", str(path))
        assert saved.returncode == 0, saved.stderr
        with sqlite3.connect(path) as copy:
            (count,) = copy.execute("select count(*) from job").fetchone()
        assert count == len(node.client.get("/jobs").json)

        fresh = make_node(name="fresh")
        result = dcron(fresh, "restore", str(path), "--json")
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["jobs"] == answer["created"] == count
        assert answer["replaced"] == 0
        assert user_fields(fresh.client.get("/jobs").json) == user_fields(
            node.client.get("/jobs").json
        )
        assert fresh.client.get("/jobs/bk-parent").json["disabled"] is True

        again = dcron(fresh, "restore", str(path))
        assert again.stdout == f"restored {count} jobs: 0 created, {count} replaced\n"

    def test_restore_refuses_a_file_that_is_not_a_backup(self, node):
        for body in (b"not a database at all", b""):
            response = node.client.post("/restore", raw=body)
            assert response.status == 400, response
            assert response.json["error"].startswith("body: ")

    def test_restore_refuses_a_database_without_jobs(self, node, tmp_path):
        path = tmp_path / "other.db"
        with sqlite3.connect(path) as other:
            other.execute("create table something (x)")
        response = node.client.post("/restore", raw=path.read_bytes())
        assert response.status == 400
        assert response.json["error"].startswith("body: not a dcron backup")

    def test_restore_refuses_a_child_whose_parent_is_nowhere(self, node, tmp_path):
        node.client.post("/jobs", job("bk-gone-parent"))
        node.client.post(
            "/jobs", job("bk-orphan", parent_job="bk-gone-parent", schedule="")
        )
        backup = node.client.get("/backup").body
        path = tmp_path / "orphan.db"
        path.write_bytes(backup)
        with sqlite3.connect(path) as copy:
            copy.execute("delete from job where name != 'bk-orphan'")
        node.client.delete("/jobs/bk-orphan")
        node.client.delete("/jobs/bk-gone-parent")
        response = node.client.post("/restore", raw=path.read_bytes())
        assert response.status == 400
        assert response.json["error"] == "body: job bk-orphan: no parent bk-gone-parent"
        assert node.client.get("/jobs/bk-orphan").status == 404

    def test_restore_refuses_a_body_over_its_bound_before_reading_it(self, node):
        port = int(node.client.base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /restore HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 1099511627776\r\n\r\n"
            )
            answer = sock.recv(65536).decode()
        assert answer.startswith("HTTP/1.1 413")
        assert '{"error": "body: larger than 1073741824 bytes"}' in answer

    def test_the_restore_bound_is_a_setting(self, make_node, tmp_path):
        small = make_node("--max-restore-bytes", "1000")
        response = small.client.post("/restore", raw=b"x" * 1001)
        assert response.status == 413
        assert response.json == {"error": "body: larger than 1000 bytes"}

    def test_backup_to_standard_output(self, node):
        result = subprocess.run(
            [sys.executable, str(ROOT / "dcron.py"), "backup", "-"]
            + ["--address", node.client.base],
            capture_output=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(b"SQLite format 3\0")
