"""Running one job's command as an OS process and producing its result.

An execution is a process group of its own: the command starts in a new
session, so a timeout, a terminate request or a node shutdown can signal
every process the command forked (SIGTERM, a grace period, then SIGKILL).
Standard output and standard error share one pipe so their order is kept,
and only the first and last ``output_keep`` bytes are held, however much the
command prints.

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


@dataclass
class _Run:
    """One execution in progress on this node."""

    spec: RunSpec
    process: asyncio.subprocess.Process
    output: _BoundedOutput
    exited: asyncio.Task[int]
    pipe_closed: asyncio.Future[None]
    stopping: asyncio.Task[None] | None = None
    stopped: bool = False
    timed_out: bool = False


class Executor:
    """Runs job commands as process groups and tracks the ones in progress."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        # Futures of run() calls not yet returned, including ones still
        # spawning, so shutdown() can wait for every result.
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
        started_at = datetime.now(UTC)
        if self._shutdown_grace_s is not None:
            return _not_started(spec, started_at, "the node is shutting down")
        if spec.execution_id in self._runs:
            return _not_started(spec, started_at, "execution is already running")
        try:
            argv = ["/bin/sh", "-c", spec.command] if spec.shell else _split(spec)
        except ValueError as exc:
            return _not_started(spec, started_at, str(exc))

        done = asyncio.get_running_loop().create_future()
        self._pending.add(done)
        try:
            return await self._run(spec, argv, started_at)
        finally:
            done.set_result(None)
            self._pending.discard(done)

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
        each output says the node shut down. Later run() calls do not start.
        """
        self._shutdown_grace_s = grace_s
        pending = set(self._pending)
        if not pending:
            return

        logger.info("stopping %d executions for shutdown", len(self._runs))
        for run in list(self._runs.values()):
            self._begin_stop(run, "stopped because the node shut down", grace_s)
        await asyncio.wait(pending)

    async def _run(
        self, spec: RunSpec, argv: list[str], started_at: datetime
    ) -> RunResult:
        loop = asyncio.get_running_loop()
        output = _BoundedOutput(spec.output_keep)
        pipe_closed: asyncio.Future[None] = loop.create_future()

        # Our own pipe rather than PIPE: asyncio's Process.wait() waits for its
        # pipes to close, which a detached grandchild could prevent for ever.
        try:
            read_fd, write_fd = os.pipe()
        except OSError as exc:
            return _not_started(spec, started_at, str(exc))
        transport, _ = await loop.connect_read_pipe(
            lambda: _OutputPipe(output, pipe_closed), os.fdopen(read_fd, "rb", 0)
        )
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=subprocess.STDOUT,
                cwd=spec.cwd,
                # The caller's env comes last: it may name the run differently
                # (retries of one slot share one DCRON_EXECUTION_ID).
                env={
                    **os.environ,
                    "DCRON_JOB_NAME": spec.job_name,
                    "DCRON_EXECUTION_ID": spec.execution_id,
                    **spec.env,
                },
                start_new_session=True,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            transport.close()
            return _not_started(spec, started_at, str(exc))
        finally:
            os.close(write_fd)

        clock = time.monotonic()
        run = _Run(
            spec, process, output, asyncio.ensure_future(process.wait()), pipe_closed
        )
        self._runs[spec.execution_id] = run
        logger.info(
            "job %s execution %s started (pid %d)",
            spec.job_name,
            spec.execution_id,
            process.pid,
        )
        try:
            await self._supervise(run)
        finally:
            transport.close()
            del self._runs[spec.execution_id]
            if process.returncode is None:
                # Only when run() itself is cancelled: leave nothing behind.
                _signal_group(process.pid, signal.SIGKILL)

        exit_code = _exit_code(process.returncode)
        success = exit_code == 0 and not run.stopped and not run.timed_out
        took = time.monotonic() - clock
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
            output=output.render(),
            output_truncated=output.truncated,
            started_at=started_at,
            finished_at=datetime.now(UTC),
            timed_out=run.timed_out,
        )

    async def _supervise(self, run: _Run) -> None:
        spec = run.spec
        if self._shutdown_grace_s is not None:
            # shutdown() began while this process was being spawned.
            self._begin_stop(
                run, "stopped because the node shut down", self._shutdown_grace_s
            )

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


async def _kill_group(run: _Run, why: str, grace_s: float) -> None:
    """SIGTERM the run's process group, then SIGKILL whatever outlives the grace."""
    pgid = run.process.pid
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
    # asyncio reports death by signal N as -N; shells report it as 128+N.
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
    )
