"""The sd_notify protocol, against a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

from dcron import systemd


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
