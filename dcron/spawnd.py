"""The helper process that forks and execs a node's job commands.

A node holds thousands of descriptors (sockets, the store, the pipes of runs
waiting at their gates), and a fork from it costs more for each: Python's
vfork makes the parent wait while the child closes them and execs, and the
node's event loop waited with it. This process is started with nothing open
but its socket to the node, so its forks are cheap, and they run on another
core while the node's loop goes on.

The node first sends the environment every command starts from (its own,
once it has taken its own variables out), then one request per run over a
Unix SOCK_SEQPACKET socket: a marshalled ``(run id, argv, environment
additions, cwd, stdin given)`` and,
as SCM_RIGHTS, the run's stdin (the read end of its gate, if it has one) and
the write end of its output pipe. A request too large for one packet comes as
an empty packet whose first descriptor is a memfd holding it. The reply is
``("s", run id, pid)`` once spawned or ``("f", run id, reason)`` when the
command could not start, and ``("x", run id, returncode)`` when it has exited
and been reaped here; the return code is as subprocess gives it, -N for death
by signal N.

It imports nothing of dcron and nothing beyond the standard library, to start
fast and stay small. When the node's end closes (the node stopped or died)
it exits and leaves running commands to finish on their own, as a node killed
with SIGKILL always has.
"""

from __future__ import annotations

import array
import marshal
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
from typing import Any

# Requests spawned between two looks for exited children.
BATCH = 32
# Largest request sent in a packet; a larger one comes in a memfd.
PACKET_MAX = 128 * 1024
# Descriptors a request carries at most: stdin and output, or the memfd too.
FDS_SPACE = socket.CMSG_SPACE(3 * array.array("i").itemsize)
STARTED, FAILED, EXITED = "s", "f", "x"

# The environment this process began with. The frozen executable's bootloader
# puts its own variables there, which the node then takes out of the
# environment its jobs inherit (dcron.cli); the helper, the same executable,
# needs them to find the bundle its node unpacked.
LAUNCH_ENVIRON = dict(os.environ)
# The packet of a request whose payload is in the memfd it carries.
IN_MEMFD = b"\0"
# The hidden argument that makes the frozen executable this helper.
SUBCOMMAND = "__spawnd"


def request_from(data: bytes, fds: list[int]) -> tuple[Any, list[int]]:
    """Unpack one request; the descriptors left are the run's own."""
    if data != IN_MEMFD:
        return marshal.loads(data), fds
    memfd, *rest = fds
    try:
        with os.fdopen(memfd, "rb", closefd=False) as payload:
            return marshal.loads(payload.read()), rest
    finally:
        os.close(memfd)


class Spawner:
    """Serves one node's socket: spawns, reaps and reports."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        # The node's first packet.
        self._environ: dict[str, str] | None = None
        # pid -> (run id, Popen); Popen is told each return code, so it never
        # waits for a pid of its own accord.
        self._children: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}

    def serve(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        # The node stops its runs itself: a Ctrl-C or a service stop meant for
        # it must not end the process that reports how they ended. A handler,
        # not SIG_IGN, so that the commands do not inherit the disposition.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda signum, frame: None)
        selector = selectors.DefaultSelector()
        selector.register(self._sock, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj is self._sock:
                    if not self._receive():
                        return
                else:
                    while True:
                        try:
                            if not os.read(wake_r, 4096):
                                break
                        except BlockingIOError:
                            break
            # Every round, not only when woken: a wake-up read while the
            # requests were served may stand for children exited since.
            self._reap()

    def _receive(self) -> bool:
        """Spawn the requests waiting, a batch at most, so that a steady stream
        of them leaves room to reap; False once the node's end is closed."""
        for _ in range(BATCH):
            try:
                data, ancillary, _, _ = self._sock.recvmsg(PACKET_MAX, FDS_SPACE)
            except BlockingIOError:
                return True
            except ConnectionResetError:
                return False
            fds = [
                fd
                for level, kind, payload in ancillary
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                for fd in array.array("i", payload[: len(payload) - len(payload) % 4])
            ]
            if not data and not fds:
                return False
            self._spawn(data, fds)
        return True

    def _spawn(self, data: bytes, fds: list[int]) -> None:
        run_id = -1
        try:
            message, fds = request_from(data, fds)
            if self._environ is None:
                self._environ = message
                return
            run_id, argv, env, cwd, has_stdin = message
            stdin = fds[0] if has_stdin else self._devnull
            output = fds[-1]
            popen = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env={**self._environ, **env},
                start_new_session=True,
            )
        except Exception as exc:  # a bad request must not end the helper
            self._send((FAILED, run_id, str(exc)))
            return
        finally:
            for fd in fds:
                os.close(fd)
        self._children[popen.pid] = (run_id, popen)
        self._send((STARTED, run_id, popen.pid))

    def _reap(self) -> None:
        while self._children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            entry = self._children.pop(pid, None)
            if entry is None:
                continue
            run_id, popen = entry
            popen.returncode = os.waitstatus_to_exitcode(status)
            self._send((EXITED, run_id, popen.returncode))

    def _send(self, reply: tuple[str, int, Any]) -> None:
        data = marshal.dumps(reply)
        while True:
            try:
                self._sock.send(data)
                return
            except BlockingIOError:
                select.select([], [self._sock], [])
            except OSError:
                # The node is gone; the next receive sees the socket closed.
                return


def main(argv: list[str] | None = None) -> None:
    """Serve the socket whose descriptor is the one argument."""
    fd = int((sys.argv[1:] if argv is None else argv)[-1])
    sock = socket.socket(fileno=fd)
    # Non-blocking to read until nothing is left; replies still wait for
    # room, as the node reads them whenever its loop is free.
    sock.setblocking(False)
    Spawner(sock).serve()


if __name__ == "__main__":
    main()
