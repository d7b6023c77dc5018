"""The sd_notify protocol against a real AF_UNIX datagram socket, a node that
speaks it, and the files that run dcron as a systemd service."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
from conftest import ROOT, START_TIMEOUT_S, job, wait_until

from dcron import config, systemd

BUILD = ROOT / "build"


@pytest.fixture
def listener(tmp_path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound to a path, as systemd's notify socket is."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


@pytest.fixture(autouse=True)
def no_claimed_socket(monkeypatch):
    monkeypatch.setattr(systemd, "_claimed", None)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)


class TestNotify:
    def test_it_sends_the_message_as_one_datagram(self, listener, monkeypatch):
        sock, path = listener
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert systemd.notify("READY=1\nSTATUS=serving") is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"

    def test_it_reaches_an_abstract_socket_named_with_an_at_sign(self, monkeypatch):
        name = f"dcron-test-{uuid.uuid4().hex}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind("\0" + name)
            sock.settimeout(5)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
            assert systemd.notify("STOPPING=1") is True
            assert sock.recv(4096) == b"STOPPING=1"

    def test_without_a_socket_it_does_nothing_and_says_so(self):
        assert systemd.notify("READY=1") is False

    def test_a_socket_nobody_listens_on_is_not_an_error(self, tmp_path, monkeypatch):
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
        assert systemd.notify("READY=1") is False

    def test_an_address_that_is_not_a_unix_socket_is_ignored(self, monkeypatch):
        monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
        assert systemd.notify("READY=1") is False


class TestClaimSocket:
    def test_jobs_no_longer_inherit_the_socket_but_notify_still_works(
        self, listener, monkeypatch
    ):
        sock, path = listener
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        systemd.claim_socket()
        assert "NOTIFY_SOCKET" not in os.environ
        assert systemd.notify("READY=1") is True
        assert sock.recv(4096) == b"READY=1"

    def test_claiming_twice_keeps_the_address(self, listener, monkeypatch):
        sock, path = listener
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        systemd.claim_socket()
        systemd.claim_socket()
        assert systemd.notify("STOPPING=1") is True
        assert sock.recv(4096) == b"STOPPING=1"


class TestNodeUnderSystemd:
    def test_a_node_says_ready_then_stopping_and_hides_the_socket_from_jobs(
        self, listener, make_node, monkeypatch
    ):
        sock, path = listener
        sock.settimeout(START_TIMEOUT_S)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        node = make_node()
        assert sock.recv(4096).split(b"\n")[0] == b"READY=1"

        node.client.post("/jobs", job("sees-env", command="env"))
        node.client.post("/jobs/sees-env/run")
        (run,) = wait_until(lambda: node.client.finished("sees-env"))
        assert "DCRON_JOB_NAME=sees-env" in run["output"]
        assert "NOTIFY_SOCKET" not in run["output"]

        assert node.stop() == 0
        assert sock.recv(4096) == b"STOPPING=1"


class TestServiceFiles:
    def test_the_sample_config_is_generated_from_the_settings_table(self):
        text = (BUILD / "dcron.toml").read_text()
        assert text == config.sample_toml(), (
            "build/dcron.toml is stale; regenerate it with the command in its header"
        )

    def test_each_default_shown_in_the_sample_config_is_the_default(self, tmp_path):
        shown = [
            line[2:]
            for line in config.sample_toml().splitlines()
            if re.match(r"^# \w+ = ", line) and not line.startswith("# node_name")
        ]
        assert len(shown) == len(config.SETTINGS) - 1
        path = tmp_path / "defaults.toml"
        path.write_text("\n".join(shown) + "\n")
        assert config.resolve({"config": str(path)}, {}) == config.resolve({}, {})

    def test_the_sample_config_keeps_data_in_the_state_directory(self):
        path = BUILD / "dcron.toml"
        settings = config.resolve({"config": str(path)}, {})
        assert settings.data_dir == "/var/lib/dcron"
        assert settings == replace(config.resolve({}, {}), data_dir="/var/lib/dcron")

    def test_the_unit_runs_the_binary_as_its_own_user_under_type_notify(self):
        lines = set((BUILD / "dcron.service").read_text().splitlines())
        for line in (
            "Type=notify",
            "NotifyAccess=all",
            "ExecStart=/usr/local/bin/dcron agent --config /etc/dcron/dcron.toml",
            "User=dcron",
            "StateDirectory=dcron",
            "Restart=on-failure",
            "KillMode=mixed",
        ):
            assert line in lines

    @pytest.mark.skipif(
        shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
    )
    def test_systemd_analyze_accepts_the_unit(self, tmp_path):
        # verify also checks that ExecStart exists; point it at one that does.
        unit = (BUILD / "dcron.service").read_text()
        path = tmp_path / "dcron.service"
        path.write_text(unit.replace("/usr/local/bin/dcron", shutil.which("true")))
        result = subprocess.run(
            ["systemd-analyze", "verify", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
