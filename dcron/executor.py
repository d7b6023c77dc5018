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
Processes are reaped through pidfds, not asyncio's child watcher: no thread
per process, and no coroutine between a slot and its fork.

Everything here is a coroutine or a quick call and never blocks the event
loop; the module knows nothing of HTTP, Raft or the store.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

logger = logging.getLogger(__name__)

OUTPUT_KEEP_BYTES = 64 * 1024  # kept at each end of the output
TERM_GRACE_S = 5.0  # between SIGTERM and SIGKILL

# How long to keep reading after the command exited. A process that left the
# group (setsid, daemonizing) can hold the pipe open for ever; the run must
# still end.
OUTPUT_DRAIN_S = 1.0

EXIT_NOT_STARTED = -1

# A shell run can be spawned ahead of its slot and held at a gate, so that at
# the slot starting it costs one write instead of a fork and an exec. The
# shell's stdin is then a pipe the executor holds: the script first reads one
# line from it and goes on only if that line is "go", points stdin at
# /dev/null as for any run, and runs the command. If the node dies before the
# slot, the pipe closes without "go" and the shell exits without running it.
_GATE = (
    'read -r dcron_gate && [ "$dcron_gate" = go ] || exit 125\n'
    "unset dcron_gate; exec </dev/null\n"
)


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
    env: dict[str, str]
    # Why the command cannot start (shlex cannot split it); start() says so.
    error: str | None = None

    @property
    def gateable(self) -> bool:
        """Whether start() can spawn this run ahead, held until release()."""
        return self.spec.shell and self.error is None


@dataclass(frozen=True)
class StartedRun:
    """A process start() spawned; supervise() sees it through to its result."""

    spec: RunSpec
    pid: int
    started_at: datetime


@dataclass
class _Run:
    """One execution in progress on this node."""

    spec: RunSpec
    popen: subprocess.Popen[bytes]
    started_at: datetime
    clock: float  # time.monotonic() at the start
    read_fd: int  # the output pipe, until supervise() connects it
    output: _BoundedOutput
    # The exit code as Popen gives it (-N for signal N), once reaped.
    exited: asyncio.Future[int]
    pipe_closed: asyncio.Future[None]
    # Resolved when supervise() is done with the run.
    supervised: asyncio.Future[None]
    # Resolved when the command may begin: at once, or at release().
    released: asyncio.Future[None]
    # The write end of the gate of a run spawned ahead, until released.
    gate_fd: int | None = None
    stopping: asyncio.Task[None] | None = None
    stopped: bool = False
    timed_out: bool = False


class Executor:
    """Runs job commands as process groups and tracks the ones in progress."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        # One future per started run, resolved once supervise() is done with
        # it, so shutdown() can wait for every result.
        self._pending: set[asyncio.Future[None]] = set()
        self._shutdown_grace_s: float | None = None

    def running(self) -> list[str]:
        """Execution ids of the processes running here now."""
        return list(self._runs)

    def output_so_far(self, execution_id: str) -> str | None:
        """The bounded output of a running execution; None if not running here."""
        run = self._runs.get(execution_id)
        return run.output.render() if run else None

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
            **os.environ,
            "DCRON_JOB_NAME": spec.job_name,
            "DCRON_EXECUTION_ID": spec.execution_id,
            **spec.env,
        }
        return PreparedRun(spec, argv, env)

    def start(
        self, prepared: PreparedRun, gated: bool = False
    ) -> StartedRun | RunResult:
        """Spawn the process of a prepared run now, without yielding to the loop.

        Call it on the event loop's thread, and hand what it returns to
        supervise(): every started process needs it to be reaped. A run that
        cannot start gives its not-started result instead; never raises for
        the command's sake. ``gated`` (for a ``gateable`` run) spawns the shell
        held at its gate: the command begins at release(), and its start time
        and timeout count from then.
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

        gated = gated and prepared.gateable
        argv = prepared.argv
        if gated:
            argv = [*argv[:-1], _GATE + argv[-1]]

        # Our own pipe rather than PIPE: the output waits in it until
        # supervise() connects the read end, and no file object of Popen's
        # needs closing.
        try:
            read_fd, write_fd = os.pipe()
            gate_read, gate_fd = os.pipe() if gated else (subprocess.DEVNULL, None)
        except OSError as exc:
            return _not_started(spec, started_at, str(exc))
        try:
            popen = subprocess.Popen(
                argv,
                stdin=gate_read,
                stdout=write_fd,
                stderr=subprocess.STDOUT,
                cwd=spec.cwd,
                env=prepared.env,
                start_new_session=True,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            os.close(read_fd)
            if gate_fd is not None:
                os.close(gate_fd)
            return _not_started(spec, started_at, str(exc))
        finally:
            os.close(write_fd)
            if gate_fd is not None:
                os.close(gate_read)

        run = _Run(
            spec=spec,
            popen=popen,
            started_at=started_at,
            clock=time.monotonic(),
            read_fd=read_fd,
            output=_BoundedOutput(spec.output_keep),
            exited=loop.create_future(),
            pipe_closed=loop.create_future(),
            supervised=loop.create_future(),
            released=loop.create_future(),
            gate_fd=gate_fd,
        )
        self._runs[spec.execution_id] = run
        self._pending.add(run.supervised)
        if not gated:
            self._released(run)
        return StartedRun(spec, popen.pid, started_at)

    def release(self, execution_id: str) -> bool:
        """Let a run spawned ahead by ``start(gated=True)`` begin now.

        One write and one close: a burst spawned ahead starts in well under a
        millisecond. False when the run is not held at its gate here.
        """
        run = self._runs.get(execution_id)
        if run is None or run.gate_fd is None:
            return False
        run.started_at = datetime.now(UTC)
        run.clock = time.monotonic()
        gate_fd, run.gate_fd = run.gate_fd, None
        try:
            os.write(gate_fd, b"go\n")
        except OSError:
            # The shell is already gone (stopped at its gate); supervise()
            # reports that.
            return False
        finally:
            os.close(gate_fd)
        self._released(run)
        return True

    def cancel(self, execution_id: str, reason: str) -> bool:
        """Send a run spawned ahead away from its gate without running it.

        Its result says it did not start, with ``reason``. False when the run
        is not held at its gate here.
        """
        run = self._runs.get(execution_id)
        if run is None or run.gate_fd is None:
            return False
        run.output.note(f"could not start: {reason}")
        os.close(run.gate_fd)
        run.gate_fd = None
        return True

    def _released(self, run: _Run) -> None:
        # Logged by supervise(), not here: a burst is released back to back,
        # and a log line for each would delay the last of them.
        run.released.set_result(None)

    async def supervise(self, started: StartedRun) -> RunResult:
        """Watch a started run to its end and return its result.

        Reads the output, enforces the timeout and reaps the process; call it
        once per StartedRun. Never raises for the command's sake.
        """
        spec = started.spec
        run = self._runs[spec.execution_id]
        loop = asyncio.get_running_loop()
        try:
            _watch_exit(run, loop)
            transport, _ = await loop.connect_read_pipe(
                lambda: _OutputPipe(run.output, run.pipe_closed),
                os.fdopen(run.read_fd, "rb", 0),
            )
            try:
                begun: set[asyncio.Future[Any]] = {run.released, run.exited}
                await asyncio.wait(begun, return_when=asyncio.FIRST_COMPLETED)
                if not run.released.done():
                    return await self._never_released(run)
                logger.info(
                    "job %s execution %s started (pid %d)",
                    spec.job_name,
                    spec.execution_id,
                    run.popen.pid,
                )
                await self._wait_for_end(run)
            finally:
                transport.close()
        finally:
            del self._runs[spec.execution_id]
            if run.popen.returncode is None:
                # Only when supervise() itself is cancelled: leave nothing
                # behind. The exit watcher still reaps the process.
                _signal_group(run.popen.pid, signal.SIGKILL)
            run.supervised.set_result(None)
            self._pending.discard(run.supervised)

        exit_code = _exit_code(run.popen.returncode)
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

    async def _never_released(self, run: _Run) -> RunResult:
        """The result of a run whose shell ended at its gate (supervise())."""
        if run.gate_fd is not None:
            os.close(run.gate_fd)
            run.gate_fd = None
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


def _watch_exit(run: _Run, loop: asyncio.AbstractEventLoop) -> None:
    """Reap the run's process when it exits, then resolve ``run.exited``.

    A pidfd turns the exit into an event of the loop: no thread and no SIGCHLD
    handler. Without pidfds (Linux before 5.3) a thread waits for the process.
    Either way the process is reaped here and Popen is told its return code,
    so it never waits for the process itself.
    """
    pid = run.popen.pid
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError) as exc:
        logger.debug("pid %d watched by a thread: %s", pid, exc)
        # A thread of its own, not the loop's executor: a few long runs would
        # otherwise hold every worker and leave the others unreaped.
        threading.Thread(
            target=_wait_in_thread, args=(run, loop), name=f"wait-{pid}", daemon=True
        ).start()
        return

    def on_exit() -> None:
        returncode = _reap(pid, os.WNOHANG)
        if returncode is None:
            return
        loop.remove_reader(pidfd)
        os.close(pidfd)
        _exited(run, returncode)

    loop.add_reader(pidfd, on_exit)


def _wait_in_thread(run: _Run, loop: asyncio.AbstractEventLoop) -> None:
    returncode = _reap(run.popen.pid, 0)
    if returncode is None:
        return
    try:
        loop.call_soon_threadsafe(_exited, run, returncode)
    except RuntimeError:
        # The loop closed meanwhile; Popen must still not wait for the pid.
        run.popen.returncode = returncode


def _reap(pid: int, options: int) -> int | None:
    """Wait for one process: its return code, or None while it still runs.

    The code is as Popen gives it: -N for death by signal N.
    """
    try:
        reaped, status = os.waitpid(pid, options)
    except ChildProcessError:
        # Another waitpid() caller took the status; asyncio says 255 then.
        logger.warning("pid %d was reaped elsewhere; its exit code is lost", pid)
        return 255
    if reaped == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def _exited(run: _Run, returncode: int) -> None:
    # Popen would otherwise wait for the pid itself, from poll() or __del__.
    run.popen.returncode = returncode
    if not run.exited.done():
        run.exited.set_result(returncode)


async def _kill_group(run: _Run, why: str, grace_s: float) -> None:
    """SIGTERM the run's process group, then SIGKILL whatever outlives the grace."""
    pgid = run.popen.pid
    if not _signal_group(pgid, signal.SIGTERM):
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


def _signal_group(pgid: int, signum: signal.Signals) -> bool:
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
    # Popen reports death by signal N as -N; shells report it as 128+N.
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
