"""Running one job's command as an OS process and producing its result.

An execution is a process group of its own: the command starts in a new
session, so a timeout, a terminate request or a node shutdown can signal
every process the command forked (SIGTERM, a grace period, then SIGKILL).
Standard output and standard error share one pipe so their order is kept,
and only the first and last ``output_keep`` bytes are held, however much the
command prints.

A run goes through three steps. ``prepare`` builds the argv and environment
ahead of the slot; ``start`` spawns the process at the slot, synchronously, so
a burst of runs due at one instant is spawned back to back in one callback;
``supervise`` then watches the process to its end. ``run`` does all three.

The node does not fork. Its commands are spawned by a helper process started
with nothing open (dcron.spawnd): ``start`` sends it one request with the
run's pipe ends and returns at once, and the helper forks on the other core,
reaps, and reports each pid and exit status back. A fork from the node itself
cost its event loop half a millisecond a run, more the more descriptors it
held (docs/benchmarks.md). Should the helper die, a new one is started for
the next run; the runs it had spawned are watched to their end by pidfd, with
their exit status lost.

Everything here is a coroutine or a quick call and never blocks the event
loop; the module knows nothing of HTTP, Raft or the store.
"""

from __future__ import annotations

import asyncio
import codecs
import itertools
import logging
import marshal
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dcron import spawnd

logger = logging.getLogger(__name__)

OUTPUT_KEEP_BYTES = 64 * 1024  # kept at each end of the output
TERM_GRACE_S = 5.0  # between SIGTERM and SIGKILL

# How long to keep reading after the command exited. A process that left the
# group (setsid, daemonizing) can hold the pipe open for ever; the run must
# still end.
OUTPUT_DRAIN_S = 1.0

EXIT_NOT_STARTED = -1
# The exit code of a run whose spawner died before reporting its exit.
EXIT_STATUS_LOST = 255

# Requests wait in the socket while the spawner forks a burst; 167 runs with
# the node's environment fit many times over.
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
REPLY_MAX = 4096
REPLY_BATCH = 256
# A spawner whose socket closed exits at once; this long is a hung one.
HELPER_EXIT_S = 5.0

# A shell run can be spawned ahead of its slot and held at a gate, so that at
# the slot starting it costs no fork and no exec. The shell's stdin is then
# the read end of the gate's pipe, which every run held for the same instant
# shares: the script first reads one line from it, points stdin at /dev/null
# as for any run, and runs the command. Releasing the gate is one write of an
# empty line per run; shells read their input a byte at a time, so each takes
# exactly one. If the node dies before the slot, or the gate is cancelled,
# the pipe closes with no line in it and the shells exit without running the
# command.
_GATE = "read -r dcron_gate || exit 125\nunset dcron_gate; exec </dev/null\n"
# The most runs one gate holds: one write of this many bytes is atomic and
# fits an empty pipe. More runs due at one instant take more gates.
GATE_RUNS_MAX = 4096


@dataclass(frozen=True)
class RunSpec:
    """What to run for one execution, and within which bounds."""

    execution_id: str
    job_name: str
    command: str
    # True: run by /bin/sh -c; False: split with shlex and exec'd directly.
    shell: bool = True
    # Added on top of the node's own environment.
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    # None or 0: no timeout.
    timeout_s: float | None = None
    output_keep: int = OUTPUT_KEEP_BYTES
    term_grace_s: float = TERM_GRACE_S


@dataclass
class RunResult:
    """How one execution ended.

    ``exit_code`` is the process's exit code, 128+N for death by signal N, and
    -1 when the command could not start. ``success`` is false whenever dcron
    had to stop the process, even if it then exited 0.
    """

    exit_code: int
    success: bool
    output: str
    output_truncated: bool
    started_at: datetime
    finished_at: datetime
    timed_out: bool
    # False when the command never began: it could not be spawned, or a run
    # held at its gate was stopped before its start time.
    started: bool = True


class _BoundedOutput:
    """The first and last ``keep`` bytes of a stream, plus dcron's own notes."""

    def __init__(self, keep: int) -> None:
        self._keep = max(keep, 0)
        self._head = bytearray()
        self._tail: deque[bytes] = deque()
        self._tail_len = 0
        self._dropped = 0
        self._notes: list[str] = []

    @property
    def truncated(self) -> bool:
        return self._dropped > 0

    def append(self, data: bytes) -> None:
        room = self._keep - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data:
            return

        # Trim the tail as we go so memory stays flat for any amount of output.
        self._tail.append(data)
        self._tail_len += len(data)
        while self._tail_len > self._keep:
            excess = self._tail_len - self._keep
            oldest = self._tail[0]
            if len(oldest) <= excess:
                self._tail.popleft()
                cut = len(oldest)
            else:
                self._tail[0] = oldest[excess:]
                cut = excess
            self._tail_len -= cut
            self._dropped += cut

    def note(self, text: str) -> None:
        """Add a ``[dcron: ...]`` line; notes follow the output and are never cut."""
        self._notes.append(f"[dcron: {text}]\n")

    def render(self) -> str:
        tail = b"".join(self._tail)
        if not self.truncated:
            text = (bytes(self._head) + tail).decode("utf-8", errors="replace")
        else:
            text = self._render_cut(tail)

        if self._notes and text and not text.endswith("\n"):
            text += "\n"
        return text + "".join(self._notes)

    def _render_cut(self, tail: bytes) -> str:
        # Neither end may show a character cut in half: the decoder holds back
        # an incomplete sequence at the end of the head, and continuation
        # bytes opening the tail are skipped. Both count as dropped.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        head_text = decoder.decode(bytes(self._head), final=False)
        held_back = len(decoder.getstate()[0])
        skip = 0
        while skip < min(3, len(tail)) and tail[skip] & 0xC0 == 0x80:
            skip += 1

        dropped = self._dropped + held_back + skip
        tail_text = tail[skip:].decode("utf-8", errors="replace")
        return f"{head_text}\n[dcron: {dropped} bytes of output dropped]\n{tail_text}"


class _OutputPipe(asyncio.Protocol):
    """Feeds the read end of the output pipe into a bounded buffer."""

    def __init__(self, output: _BoundedOutput, closed: asyncio.Future[None]) -> None:
        self._output = output
        self._closed = closed

    def data_received(self, data: bytes) -> None:
        self._output.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)


@dataclass(frozen=True)
class PreparedRun:
    """A run made ready ahead of its slot: what start() needs, already built."""

    spec: RunSpec
    argv: list[str]
    # Added to the node's environment: the DCRON_ variables and the job's own.
    env: dict[str, str]
    # Why the command cannot start (shlex cannot split it); start() says so.
    error: str | None = None

    @property
    def gateable(self) -> bool:
        """Whether start() can spawn this run ahead, held until release()."""
        return self.spec.shell and self.error is None


class Gate:
    """Holds the shell runs spawned ahead for one instant, to release at once.

    One write releases all of them. With a pipe per run the node made one
    write per run, and each write woke a shell that could take the node's
    core: the last runs of a burst of 167 were released up to 85 ms after
    the first, the node waiting for its turn on the core behind the shells
    it had woken (docs/benchmarks.md).
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC)
        self._runs: list[_Run] = []

    @property
    def full(self) -> bool:
        return len(self._runs) >= GATE_RUNS_MAX

    @property
    def closed(self) -> bool:
        return self._write_fd < 0

    def _hold(self, run: _Run) -> int:
        """Add a run; returns a new descriptor of the read end for its shell."""
        read_fd = os.dup(self._read_fd)
        self._runs.append(run)
        run.gate = self
        return read_fd

    def _close(self, release: bool) -> list[_Run]:
        """Close the gate, releasing its shells or not; returns the runs
        still held here (not stopped at the gate meanwhile)."""
        if self.closed:
            return []
        held = [run for run in self._runs if run.gate is self]
        for run in held:
            run.gate = None
        try:
            if release:
                # A line for every run ever held, so that a shell being
                # stopped meanwhile that still takes one leaves enough.
                os.write(self._write_fd, b"\n" * len(self._runs))
        except OSError:
            # Every shell already left (EPIPE): none of them begins.
            held = []
        finally:
            os.close(self._write_fd)
            os.close(self._read_fd)
            self._write_fd = self._read_fd = -1
        return held


@dataclass(frozen=True)
class StartedRun:
    """A run start() handed to the spawner; supervise() sees it to its result."""

    spec: RunSpec
    started_at: datetime


@dataclass
class _Run:
    """One execution in progress on this node."""

    spec: RunSpec
    started_at: datetime
    clock: float  # time.monotonic() at the start
    read_fd: int  # the output pipe, until supervise() connects it
    output: _BoundedOutput
    # The process id once spawned, None if it could not be.
    spawned: asyncio.Future[int | None]
    # Resolved once the process is reaped, or once it could not be spawned.
    exited: asyncio.Future[None]
    pipe_closed: asyncio.Future[None]
    # Resolved when supervise() is done with the run.
    supervised: asyncio.Future[None]
    # Resolved when the command may begin: at once, or at release().
    released: asyncio.Future[None]
    # The gate of a run spawned ahead, until released or cancelled.
    gate: Gate | None = None
    # The exit code as subprocess gives it (-N for signal N), once reaped.
    returncode: int | None = None
    spawn_error: str | None = None
    stopping: asyncio.Task[None] | None = None
    stopped: bool = False
    timed_out: bool = False

    def on_spawned(self, pid: int | None, error: str | None = None) -> None:
        if self.spawned.done():
            return
        self.spawned.set_result(pid)
        if pid is None:
            self.spawn_error = error
            self.exited.set_result(None)

    def on_exited(self, returncode: int) -> None:
        if not self.exited.done():
            self.returncode = returncode
            self.exited.set_result(None)


class _Spawner:
    """The node's end of its spawnd helper: requests out, pids and exits back.

    Requests never block the loop: one the socket cannot take now waits in a
    queue, with its descriptors, until the helper has read the ones before.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, runs: dict[int, _Run]):
        self._loop = loop
        # Run id -> run, from the request until the helper reports its end.
        self._runs = runs
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            ours.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
            theirs.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        try:
            self.process = subprocess.Popen(
                [*_helper_argv(), str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                pass_fds=[theirs.fileno()],
                env=spawnd.LAUNCH_ENVIRON if getattr(sys, "frozen", False) else None,
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._queue: deque[tuple[bytes, list[int]]] = deque()
        self.closed = False
        loop.add_reader(ours.fileno(), self._on_readable)
        # Sent once: each request then carries only what its run adds, a few
        # hundred bytes instead of the whole environment.
        self.send(dict(os.environ), [])
        logger.debug("process spawner started (pid %d)", self.process.pid)

    def send(self, request: Any, fds: list[int]) -> None:
        """Send one request; the helper owns ``fds`` from here on."""
        data = marshal.dumps(request)
        if len(data) > spawnd.PACKET_MAX:
            memfd = os.memfd_create("dcron-run", os.MFD_CLOEXEC)
            with os.fdopen(os.dup(memfd), "wb") as payload:
                payload.write(data)
            os.lseek(memfd, 0, os.SEEK_SET)
            data, fds = spawnd.IN_MEMFD, [memfd, *fds]
        self._queue.append((data, fds))
        if len(self._queue) == 1:
            self._flush()

    def _flush(self) -> None:
        while self._queue:
            data, fds = self._queue[0]
            try:
                if fds:
                    socket.send_fds(self._sock, [data], fds)
                else:
                    self._sock.send(data)
            except BlockingIOError:
                self._loop.add_writer(self._sock.fileno(), self._flush)
                return
            except OSError as exc:
                self._lost(f"could not send a request: {exc}")
                return
            self._queue.popleft()
            _close_all(fds)
        self._loop.remove_writer(self._sock.fileno())

    def _on_readable(self) -> None:
        # A batch at most per callback, so a steady stream of replies cannot
        # hold the loop; what is left makes the socket readable again.
        for _ in range(REPLY_BATCH):
            if self.closed:
                return
            try:
                data = self._sock.recv(REPLY_MAX)
            except BlockingIOError:
                return
            except OSError as exc:
                self._lost(str(exc))
                return
            if not data:
                self._lost("it closed its socket")
                return
            kind, run_id, value = marshal.loads(data)
            run = self._runs.get(run_id)
            if run is None:
                continue
            if kind == spawnd.STARTED:
                run.on_spawned(value)
            elif kind == spawnd.FAILED:
                del self._runs[run_id]
                run.on_spawned(None, value)
            else:
                del self._runs[run_id]
                run.on_exited(value)

    def _lost(self, why: str) -> None:
        """The helper is gone: fail what it had not spawned, watch the rest."""
        self.close()
        returncode = self.process.poll()
        if returncode is None:
            self.process.kill()
            returncode = self.process.wait()
        logger.error(
            "process spawner (pid %d) lost: %s, exit code %d; %d runs in flight",
            self.process.pid,
            why,
            returncode,
            len(self._runs),
        )
        while self._runs:
            _, run = self._runs.popitem()
            if not run.spawned.done():
                run.on_spawned(None, "the process spawner exited before starting it")
            else:
                pid = run.spawned.result()
                assert pid is not None
                _watch_orphan(run, pid, self._loop)

    def close(self) -> None:
        """Close the socket; the helper exits when it sees it closed."""
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._loop.remove_writer(self._sock.fileno())
        self._sock.close()
        while self._queue:
            _close_all(self._queue.popleft()[1])

    def wait_closed(self) -> None:
        """Close and reap the helper, which exits at once once closed."""
        if not self.closed:
            self.close()
        try:
            self.process.wait(timeout=HELPER_EXIT_S)
        except subprocess.TimeoutExpired:
            logger.warning("process spawner (pid %d) killed", self.process.pid)
            self.process.kill()
            self.process.wait()


class Executor:
    """Runs job commands as process groups and tracks the ones in progress."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        # Run ids the spawner is told, and the runs it has not reported ended.
        self._run_ids = itertools.count(1)
        self._spawned: dict[int, _Run] = {}
        self._spawner: _Spawner | None = None
        # Runs handed to the spawner that it has not yet started or failed,
        # and room() callers waiting for that count to drop.
        self._unstarted = 0
        self._room_waiters: list[tuple[int, asyncio.Future[None]]] = []
        # One future per started run, resolved once supervise() is done with
        # it, so shutdown() can wait for every result.
        self._pending: set[asyncio.Future[None]] = set()
        self._shutdown_grace_s: float | None = None

    def open(self) -> None:
        """Start the spawner helper now rather than at the first run.

        Call it on the event loop's thread; start() opens it otherwise, and
        again after it died.
        """
        if self._spawner is None or self._spawner.closed:
            self._spawner = _Spawner(asyncio.get_running_loop(), self._spawned)
            # A caller that never closes (a one-off run()) still reaps it.
            weakref.finalize(self, self._spawner.wait_closed)

    def close(self) -> None:
        """Stop the spawner helper; call it after shutdown()."""
        if self._spawner is not None:
            self._spawner.wait_closed()

    def running(self) -> list[str]:
        """Execution ids of the processes running here now."""
        return list(self._runs)

    @property
    def unstarted(self) -> int:
        """Runs handed to the spawner and not yet started (or failed) by it."""
        return self._unstarted

    async def room(self, limit: int) -> None:
        """Wait until fewer than ``limit`` runs wait for the spawner.

        What makes more runs (a manual run's request, the scheduler's fires)
        waits here, so a node given runs faster than it can start them holds
        a bounded number of them instead of a growing queue.
        """
        while self._unstarted >= limit:
            waiter = asyncio.get_running_loop().create_future()
            self._room_waiters.append((limit, waiter))
            await waiter

    def _counted_start(self, _: asyncio.Future[int | None]) -> None:
        self._unstarted -= 1
        if not self._room_waiters:
            return
        waiting, self._room_waiters = self._room_waiters, []
        for limit, waiter in waiting:
            if self._unstarted >= limit:
                self._room_waiters.append((limit, waiter))
            elif not waiter.done():
                waiter.set_result(None)

    def output_so_far(self, execution_id: str) -> str | None:
        """The bounded output of a running execution; None if not running here."""
        run = self._runs.get(execution_id)
        return run.output.render() if run else None

    async def pid(self, execution_id: str) -> int | None:
        """The pid of a run once the spawner has started it.

        None if it could not start or is not running here.
        """
        run = self._runs.get(execution_id)
        return None if run is None else await asyncio.shield(run.spawned)

    async def run(self, spec: RunSpec) -> RunResult:
        """Run ``spec`` to its end and return the result.

        Never raises for the command's sake: a command that cannot start gives
        exit code -1 and the reason in the output.
        """
        started = self.start(self.prepare(spec))
        if isinstance(started, RunResult):
            return started
        return await self.supervise(started)

    def prepare(self, spec: RunSpec) -> PreparedRun:
        """Build the argv and the environment of ``spec``, ahead of its slot.

        Never raises: a command that cannot be split is carried to start(),
        which reports it at the slot like any other run that cannot start.
        """
        try:
            argv = ["/bin/sh", "-c", spec.command] if spec.shell else _split(spec)
        except ValueError as exc:
            return PreparedRun(spec, [], {}, str(exc))

        # The caller's env comes last: it may name the run differently
        # (retries of one slot share one DCRON_EXECUTION_ID).
        env = {
            "DCRON_JOB_NAME": spec.job_name,
            "DCRON_EXECUTION_ID": spec.execution_id,
            **spec.env,
        }
        return PreparedRun(spec, argv, env)

    def gate(self) -> Gate:
        """A new gate for runs spawned ahead for one instant (OSError if no
        pipe can be made)."""
        return Gate()

    def start(
        self, prepared: PreparedRun, gate: Gate | None = None
    ) -> StartedRun | RunResult:
        """Have the spawner start the process of a prepared run, and return.

        Call it on the event loop's thread, and hand what it returns to
        supervise(): it reports every started run, including one the spawner
        then fails to start. A run that cannot be handed over gives its
        not-started result instead; never raises for the command's sake.
        ``gate`` (for a ``gateable`` run) spawns the shell held at that gate,
        which must have room: the command begins when release() opens it, and
        its start time and timeout count from then.
        """
        spec = prepared.spec
        started_at = datetime.now(UTC)
        if self._shutdown_grace_s is not None:
            return _not_started(spec, started_at, "the node is shutting down")
        if spec.execution_id in self._runs:
            return _not_started(spec, started_at, "execution is already running")
        if prepared.error is not None:
            return _not_started(spec, started_at, prepared.error)
        loop = asyncio.get_running_loop()
        try:
            self.open()
        except OSError as exc:
            return _not_started(spec, started_at, f"no process spawner: {exc}")
        assert self._spawner is not None

        if not prepared.gateable:
            gate = None
        elif gate is not None and (gate.closed or gate.full):
            raise ValueError("the gate is closed or full")
        argv = prepared.argv
        if gate is not None:
            argv = [*argv[:-1], _GATE + argv[-1]]

        # Our own pipe rather than PIPE: the output waits in it until
        # supervise() connects the read end.
        try:
            read_fd, write_fd = os.pipe()
        except OSError as exc:
            return _not_started(spec, started_at, str(exc))

        run = _Run(
            spec=spec,
            started_at=started_at,
            clock=time.monotonic(),
            read_fd=read_fd,
            output=_BoundedOutput(spec.output_keep),
            spawned=loop.create_future(),
            exited=loop.create_future(),
            pipe_closed=loop.create_future(),
            supervised=loop.create_future(),
            released=loop.create_future(),
        )
        fds = [write_fd]
        if gate is not None:
            try:
                fds.insert(0, gate._hold(run))
            except OSError as exc:
                _close_all([read_fd, write_fd])
                return _not_started(spec, started_at, str(exc))
        run_id = next(self._run_ids)
        self._runs[spec.execution_id] = run
        self._spawned[run_id] = run
        self._pending.add(run.supervised)
        request = (run_id, argv, prepared.env, spec.cwd, gate is not None)
        self._spawner.send(request, fds)
        self._unstarted += 1
        run.spawned.add_done_callback(self._counted_start)
        if gate is None:
            run.released.set_result(None)
        return StartedRun(spec, started_at)

    def release(self, gate: Gate) -> int:
        """Let every run held at ``gate`` begin now, with one write.

        Returns how many were released: none once the gate is closed.
        """
        now, clock = datetime.now(UTC), time.monotonic()
        held = gate._close(release=True)
        # Logged by supervise(), not here: a log line for each run would
        # hold the loop while the burst's shells start.
        for run in held:
            run.started_at, run.clock = now, clock
            run.released.set_result(None)
        return len(held)

    def cancel(self, gate: Gate, reason: str) -> int:
        """Send the runs held at ``gate`` away without running their commands.

        Their results say they did not start, with ``reason``. Returns how
        many were held.
        """
        held = gate._close(release=False)
        for run in held:
            run.output.note(f"could not start: {reason}")
        return len(held)

    async def supervise(self, started: StartedRun) -> RunResult:
        """Watch a started run to its end and return its result.

        Reads the output, enforces the timeout and waits for the spawner to
        report the exit; call it once per StartedRun. Never raises for the
        command's sake.
        """
        spec = started.spec
        run = self._runs[spec.execution_id]
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.connect_read_pipe(
                lambda: _OutputPipe(run.output, run.pipe_closed),
                os.fdopen(run.read_fd, "rb", 0),
            )
            try:
                begun: set[asyncio.Future[Any]] = {run.released, run.exited}
                await asyncio.wait(begun, return_when=asyncio.FIRST_COMPLETED)
                if run.spawn_error is None and not run.released.done():
                    return await self._never_released(run)
                pid = await run.spawned
                if pid is None:
                    return self._not_spawned(run)
                logger.info(
                    "job %s execution %s started (pid %d)",
                    spec.job_name,
                    spec.execution_id,
                    pid,
                )
                await self._wait_for_end(run)
            finally:
                transport.close()
        finally:
            del self._runs[spec.execution_id]
            run.gate = None
            if not run.exited.done():
                # Only when supervise() itself is cancelled: leave nothing
                # behind, not even a shell at its gate. The spawner still
                # reports the exit.
                run.spawned.add_done_callback(_kill_spawned)
            run.supervised.set_result(None)
            self._pending.discard(run.supervised)

        exit_code = _exit_code(run.returncode)
        success = exit_code == 0 and not run.stopped and not run.timed_out
        took = time.monotonic() - run.clock
        logger.log(
            logging.INFO if success else logging.WARNING,
            "job %s execution %s exited %d in %.2fs",
            spec.job_name,
            spec.execution_id,
            exit_code,
            took,
        )
        return RunResult(
            exit_code=exit_code,
            success=success,
            output=run.output.render(),
            output_truncated=run.output.truncated,
            started_at=run.started_at,
            finished_at=datetime.now(UTC),
            timed_out=run.timed_out,
        )

    def _not_spawned(self, run: _Run) -> RunResult:
        """The result of a run the spawner could not start (supervise())."""
        logger.warning(
            "job %s execution %s could not start: %s",
            run.spec.job_name,
            run.spec.execution_id,
            run.spawn_error,
        )
        run.output.note(f"could not start: {run.spawn_error}")
        return RunResult(
            exit_code=EXIT_NOT_STARTED,
            success=False,
            output=run.output.render(),
            output_truncated=False,
            started_at=run.started_at,
            finished_at=datetime.now(UTC),
            timed_out=False,
            started=False,
        )

    async def _never_released(self, run: _Run) -> RunResult:
        """The result of a run whose shell ended at its gate (supervise())."""
        run.gate = None
        await run.exited
        if run.stopping is not None:
            await run.stopping
        await asyncio.wait({run.pipe_closed}, timeout=OUTPUT_DRAIN_S)
        logger.warning(
            "job %s execution %s ended before its start time",
            run.spec.job_name,
            run.spec.execution_id,
        )
        now = datetime.now(UTC)
        return RunResult(
            exit_code=EXIT_NOT_STARTED,
            success=False,
            output=run.output.render(),
            output_truncated=run.output.truncated,
            started_at=now,
            finished_at=now,
            timed_out=False,
            started=False,
        )

    async def terminate(self, execution_id: str, reason: str) -> bool:
        """Stop a running execution: SIGTERM its group, grace, SIGKILL.

        The reason is noted in the execution's output. Returns once the group
        is signalled to death, or False if the execution is not running here.
        """
        run = self._runs.get(execution_id)
        if run is None:
            return False

        logger.info(
            "job %s execution %s terminating: %s",
            run.spec.job_name,
            execution_id,
            reason,
        )
        await self._stop(run, f"terminated: {reason}", run.spec.term_grace_s)
        return True

    async def shutdown(self, grace_s: float) -> None:
        """Stop every running execution for a node stop and wait for their results.

        Each group gets SIGTERM, then SIGKILL if still there after ``grace_s``;
        each output says the node shut down. Later runs do not start.
        """
        self._shutdown_grace_s = grace_s
        pending = set(self._pending)
        if not pending:
            return

        logger.info("stopping %d executions for shutdown", len(self._runs))
        for run in list(self._runs.values()):
            self._begin_stop(run, "stopped because the node shut down", grace_s)
        await asyncio.wait(pending)

    async def _wait_for_end(self, run: _Run) -> None:
        spec = run.spec
        timeout = spec.timeout_s or None
        await asyncio.wait({run.exited}, timeout=timeout)
        if not run.exited.done():
            logger.warning(
                "job %s execution %s timed out after %gs",
                spec.job_name,
                spec.execution_id,
                timeout,
            )
            run.timed_out = True
            self._begin_stop(run, f"timed out after {timeout:g}s", spec.term_grace_s)
        await run.exited
        if run.stopping is not None:
            await run.stopping

        await asyncio.wait({run.pipe_closed}, timeout=OUTPUT_DRAIN_S)
        if not run.pipe_closed.done():
            run.output.note(
                f"stopped reading output {OUTPUT_DRAIN_S:g}s after the command exited;"
                " a process that left its group still holds it"
            )
        if run.stopping is not None:
            # terminate() may have come in while the output drained.
            await run.stopping

    async def _stop(self, run: _Run, why: str, grace_s: float) -> None:
        self._begin_stop(run, why, grace_s)
        assert run.stopping is not None
        await asyncio.shield(run.stopping)

    def _begin_stop(self, run: _Run, why: str, grace_s: float) -> None:
        # The first reason wins; later requests wait for the same sequence.
        if run.stopping is None:
            run.stopped = True
            run.stopping = asyncio.ensure_future(_kill_group(run, why, grace_s))


def _helper_argv() -> list[str]:
    """How to start dcron.spawnd: a fresh interpreter, or the executable itself."""
    if getattr(sys, "frozen", False):
        return [sys.executable, spawnd.SUBCOMMAND]
    # -I -S: no site-packages and no environment's say in what is imported;
    # the helper needs the standard library and its own module only.
    root = os.path.dirname(os.path.dirname(os.path.abspath(spawnd.__file__)))
    code = (
        f"import sys; sys.path.insert(0, {root!r}); "
        "import dcron.spawnd; dcron.spawnd.main()"
    )
    return [sys.executable, "-I", "-S", "-c", code]


def _watch_orphan(run: _Run, pid: int, loop: asyncio.AbstractEventLoop) -> None:
    """Follow a run whose spawner died to its end, its exit status lost.

    A pidfd tells when a process that is not our child exits; without one
    (Linux before 5.3) the end of its output stands for its exit.
    """
    run.output.note("exit status lost: the process spawner exited")
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        run.on_exited(EXIT_STATUS_LOST)
        return
    except (AttributeError, OSError):
        run.pipe_closed.add_done_callback(lambda _: run.on_exited(EXIT_STATUS_LOST))
        return

    def on_exit() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        run.on_exited(EXIT_STATUS_LOST)

    loop.add_reader(pidfd, on_exit)


def _kill_spawned(spawned: asyncio.Future[int | None]) -> None:
    pid = None if spawned.cancelled() else spawned.result()
    if pid is not None:
        _signal_group(pid, signal.SIGKILL)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


async def _kill_group(run: _Run, why: str, grace_s: float) -> None:
    """SIGTERM the run's process group, then SIGKILL whatever outlives the grace."""
    pgid = await run.spawned
    if pgid is None or not _signal_group(pgid, signal.SIGTERM):
        # The command and everything it forked had already ended on their own,
        # as when terminate() comes while the output drains.
        run.stopped = False
        return
    run.output.note(f"{why}; sent SIGTERM")

    # The group is done once the command exited and nothing holds the pipe;
    # a grandchild that ignores SIGTERM keeps it open.
    waiting: list[asyncio.Future[Any]] = [run.exited, run.pipe_closed]
    await asyncio.wait(waiting, timeout=grace_s)
    if run.exited.done() and run.pipe_closed.done():
        return
    if _signal_group(pgid, signal.SIGKILL):
        run.output.note(f"still running {grace_s:g}s after SIGTERM; sent SIGKILL")
        logger.warning(
            "job %s execution %s killed after %gs grace",
            run.spec.job_name,
            run.spec.execution_id,
            grace_s,
        )


def _signal_group(pgid: int, signum: int) -> bool:
    """Signal a process group; False if no process of it is left."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        # The group is gone and its id now belongs to another user's processes.
        logger.warning("process group %d not ours any more; not signalled", pgid)
        return False
    return True


def _split(spec: RunSpec) -> list[str]:
    argv = shlex.split(spec.command)
    if not argv:
        raise ValueError("empty command")
    return argv


def _exit_code(returncode: int | None) -> int:
    # subprocess reports death by signal N as -N; shells report it as 128+N.
    if returncode is None:
        return EXIT_NOT_STARTED
    return 128 - returncode if returncode < 0 else returncode


def _not_started(spec: RunSpec, started_at: datetime, reason: str) -> RunResult:
    logger.warning(
        "job %s execution %s could not start: %s",
        spec.job_name,
        spec.execution_id,
        reason,
    )
    output = _BoundedOutput(spec.output_keep)
    output.note(f"could not start: {reason}")
    return RunResult(
        exit_code=EXIT_NOT_STARTED,
        success=False,
        output=output.render(),
        output_truncated=False,
        started_at=started_at,
        finished_at=datetime.now(UTC),
        timed_out=False,
        started=False,
    )
