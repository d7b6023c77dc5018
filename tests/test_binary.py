"""Smoke test of the one-file executable dist/dcron, built by build/build.sh.

.ci/run builds it before the tests; without it these tests are skipped.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, START_TIMEOUT_S, NodeProcess, job, wait_until

BINARY = ROOT / "dist" / "dcron"
STOP_TIMEOUT_S = 30.0

pytestmark = pytest.mark.skipif(
    not BINARY.exists(), reason="dist/dcron is not built; run build/build.sh"
)


class BinaryNode(NodeProcess):
    """A node run by dist/dcron instead of the Python sources."""

    def args(self) -> list[str]:
        # The same arguments, without the interpreter and dcron.py.
        return [str(BINARY), *super().args()[2:]]

    def kill(self) -> None:
        # SIGKILL would stop only the launcher: the node runs in its child and
        # would live on, its unpacked files left behind. SIGTERM reaches both.
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            super().kill()


def run_binary(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BINARY), *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def binary_node(tmp_path: Path, monkeypatch):
    # Only the time zones inside the binary: none from the host.
    monkeypatch.setenv("PYTHONTZPATH", "")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/host-libs")
    node = BinaryNode(tmp_path / "bin.data", "bin1")
    node.start()
    yield node
    if node.running():
        node.kill()


def test_the_binary_runs_a_job_and_stops_cleanly_on_sigterm(binary_node):
    client = binary_node.client
    body = job("zoned", schedule="* * * * * *", timezone="Europe/Berlin")
    body["command"] = "echo tick; env"
    assert client.post("/jobs", body).status == 201

    (run, *_) = wait_until(lambda: client.finished("zoned"), timeout=START_TIMEOUT_S)
    assert run["status"] == "success", run
    assert run["output"].startswith("tick\n")
    env = dict(line.split("=", 1) for line in run["output"].splitlines()[1:])
    # A job's programs load the host's libraries, not the bundled ones.
    assert env.get("LD_LIBRARY_PATH") == "/opt/host-libs"
    assert not [name for name in env if name.startswith("_PYI")]
    assert "_MEI" not in run["output"]

    assert binary_node.stop() == 0


def test_every_sub_command_works_from_the_binary(binary_node):
    assert run_binary("version").stdout.startswith("dcron ")
    assert len(run_binary("keygen").stdout.strip()) >= 16
    assert "--bootstrap-expect" in run_binary("agent", "--help").stdout

    address = binary_node.client.base
    applied = subprocess.run(
        [str(BINARY), "jobs", "apply", "-", "--address", address],
        input=json.dumps(job("from-cli")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert applied.returncode == 0, applied.stderr
    listed = run_binary("jobs", "list", "--json", "--address", address)
    assert [j["name"] for j in json.loads(listed.stdout)] == ["from-cli"]
    members = run_binary("members", "--address", address)
    assert members.stdout.splitlines()[1].split()[:2] == ["bin1", "leader"]
    backup = subprocess.run(
        [str(BINARY), "backup", "-", "--address", address],
        capture_output=True,
        timeout=60,
    )
    assert backup.stdout.startswith(b"SQLite format 3\0")


def test_the_node_behind_the_launcher_tells_systemd_it_is_ready(
    tmp_path: Path, monkeypatch
):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(START_TIMEOUT_S)
        # systemd reads the sender's pid from the credentials, as here.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        node = BinaryNode(tmp_path / "notify.data", "notify1")
        node.start(wait=False)
        try:
            message, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
            (level, kind, data), *_ = ancillary
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
            sender, _, _ = struct.unpack("3i", data)
            assert message.startswith(b"READY=1")
            # Not the launcher, the service's main pid: hence NotifyAccess=all
            # in build/dcron.service.
            assert node.proc is not None and sender != node.proc.pid
            assert node.stop() == 0
            assert sock.recv(4096) == b"STOPPING=1"
        finally:
            if node.running():
                node.kill()
