"""Tests of dcron.executor with real processes."""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dcron import executor
from dcron.executor import Executor, RunResult, RunSpec, StartedRun

T = TypeVar("T")

_ids = itertools.count(1)


def spec(command: str, **overrides: Any) -> RunSpec:
    fields: dict[str, Any] = {
        "execution_id": f"exec-{next(_ids)}",
        "job_name": "backup",
        "command": command,
    }
    fields.update(overrides)
    return RunSpec(**fields)


def run(command: str, **overrides: Any) -> RunResult:
    return asyncio.run(Executor().run(spec(command, **overrides)))


async def eventually(
    check: Callable[[], T], timeout_s: float = 5.0, what: str = "condition"
) -> T:
    """Poll ``check`` until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s}s")
        await asyncio.sleep(0.02)


def is_alive(pid: int) -> bool:
    # A zombie counts as gone: the container's init may never reap it.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until_gone(pid: int) -> None:
    asyncio.run(eventually(lambda: not is_alive(pid), what=f"pid {pid} gone"))


async def started(ex: Executor, job: RunSpec) -> asyncio.Task[RunResult]:
    """Start ``job`` in the background and return once it is running."""
    task = asyncio.ensure_future(ex.run(job))
    await eventually(lambda: job.execution_id in ex.running(), what="run started")
    return task


async def printed(ex: Executor, job: RunSpec, text: str) -> None:
    await eventually(
        lambda: text in (ex.output_so_far(job.execution_id) or ""),
        what=f"output {text!r}",
    )


def run_and_die(*steps: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``steps`` in a Python process holding an Executor ``ex``, which then
    dies at once, closing nothing itself."""
    script = "\n".join(
        [
            "import asyncio, os",
            "from dcron.executor import Executor, RunSpec",
            "async def main():",
            "    ex = Executor()",
            *(f"    {step}" for step in steps),
            "    os._exit(0)",
            "asyncio.run(main())",
        ]
    )
    root = Path(__file__).resolve().parent.parent
    return subprocess.run(
        [sys.executable, "-c", script], cwd=root, timeout=30, check=True
    )


def within(seconds: float, coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, seconds)

    return asyncio.run(bounded())


class TestExitCodes:
    def test_a_command_that_exits_zero_succeeds(self) -> None:
        result = run("true")

        assert result.exit_code == 0
        assert result.success
        assert not result.timed_out
        assert result.output == ""

    def test_a_nonzero_exit_code_is_a_failure(self) -> None:
        result = run("exit 3")

        assert result.exit_code == 3
        assert not result.success

    def test_death_by_signal_gives_128_plus_the_signal(self) -> None:
        result = run("kill -USR1 $$")

        assert result.exit_code == 128 + signal.SIGUSR1
        assert not result.success

    def test_start_and_finish_times_are_aware_utc_and_ordered(self) -> None:
        result = run("true")

        assert result.started_at.tzinfo is UTC
        assert result.finished_at.tzinfo is UTC
        assert result.started_at <= result.finished_at


class TestEnvironment:
    def test_stdout_and_stderr_are_captured_together_in_order(self) -> None:
        result = run("echo one; echo two >&2; echo three; echo four >&2")

        assert result.output == "one\ntwo\nthree\nfour\n"

    def test_the_job_sees_dcron_variables_and_its_own_env(self) -> None:
        job = spec(
            'echo "$DCRON_JOB_NAME $DCRON_EXECUTION_ID $DCRON_SCHEDULED_AT $COLOR"',
            env={"DCRON_SCHEDULED_AT": "2030-01-01T00:00:00Z", "COLOR": "blue"},
        )

        result = asyncio.run(Executor().run(job))

        expected = f"backup {job.execution_id} 2030-01-01T00:00:00Z blue\n"
        assert result.output == expected

    def test_the_job_inherits_the_node_environment(self) -> None:
        result = run('echo "$PATH"')

        assert result.output == os.environ["PATH"] + "\n"

    def test_stdin_is_empty(self) -> None:
        result = run("wc -c")

        assert result.output.strip() == "0"

    def test_the_command_runs_in_the_given_cwd(self, tmp_path: Path) -> None:
        result = run("pwd", cwd=str(tmp_path))

        assert result.output == f"{tmp_path}\n"

    def test_without_a_shell_the_command_is_split_and_execd_directly(self) -> None:
        result = run("printf '%s|' 'two words' $HOME", shell=False)

        assert result.output == "two words|$HOME|"

    def test_the_job_runs_in_its_own_session(self) -> None:
        result = run("ps -o sid= -p $$; echo $$")

        session, pid = result.output.split()
        assert session == pid


class TestOutputBound:
    def test_small_output_is_kept_untouched(self) -> None:
        result = run("printf 'h\\303\\251llo\\nworld'")

        assert result.output == "héllo\nworld"
        assert not result.output_truncated

    def test_output_exactly_twice_the_bound_is_not_truncated(self) -> None:
        result = run("head -c 2000 /dev/zero | tr '\\0' 'a'", output_keep=1000)

        assert result.output == "a" * 2000
        assert not result.output_truncated

    def test_fifty_megabytes_keep_exactly_head_marker_and_tail(self) -> None:
        result = run("head -c 50000000 /dev/zero | tr '\\0' 'a'")

        keep = executor.OUTPUT_KEEP_BYTES
        marker = f"\n[dcron: {50_000_000 - 2 * keep} bytes of output dropped]\n"
        assert result.output == "a" * keep + marker + "a" * keep
        assert result.output_truncated
        assert result.success

    def test_the_head_and_tail_are_the_first_and_last_bytes(self) -> None:
        result = run(
            "echo FIRST; head -c 1000000 /dev/zero | tr '\\0' 'x'; echo; echo LAST",
            output_keep=10,
        )

        dropped = 6 + 1_000_000 + 1 + 5 - 20
        assert result.output == (
            f"FIRST\nxxxx\n[dcron: {dropped} bytes of output dropped]\nxxxx\nLAST\n"
        )

    def test_a_cut_never_leaves_half_a_utf8_character(self) -> None:
        # Head: nine a's and half an é; tail: half an é, four é's and an x.
        result = run(
            "printf aaaaaaaaa; for i in $(seq 100); do printf '\\303\\251'; done;"
            " printf x",
            output_keep=10,
        )

        assert result.output == (
            "aaaaaaaaa\n[dcron: 192 bytes of output dropped]\néééé" + "x"
        )
        assert "\ufffd" not in result.output


class TestTimeout:
    def test_a_timeout_kills_the_whole_process_group(self, tmp_path: Path) -> None:
        pid_file = tmp_path / "grandchild.pid"
        result = run(
            f"sleep 100 & echo $! > {pid_file}; echo waiting; sleep 100; wait",
            timeout_s=0.5,
        )

        assert result.timed_out
        assert not result.success
        assert result.exit_code == 128 + signal.SIGTERM
        assert result.output == (
            "waiting\n[dcron: timed out after 0.5s; sent SIGTERM]\n"
        )
        wait_until_gone(int(pid_file.read_text()))

    def test_a_command_ignoring_sigterm_is_killed_after_the_grace(self) -> None:
        started = time.monotonic()

        result = run("trap '' TERM; sleep 60", timeout_s=0.3, term_grace_s=0.5)

        assert time.monotonic() - started < 5
        assert result.timed_out
        assert result.exit_code == 128 + signal.SIGKILL
        assert result.output == (
            "[dcron: timed out after 0.3s; sent SIGTERM]\n"
            "[dcron: still running 0.5s after SIGTERM; sent SIGKILL]\n"
        )

    def test_a_timeout_of_zero_means_no_timeout(self) -> None:
        result = run("sleep 0.2; echo done", timeout_s=0)

        assert result.success
        assert result.output == "done\n"

    def test_a_detached_grandchild_holding_the_pipe_does_not_hang_the_run(
        self, tmp_path: Path
    ) -> None:
        pid_file = tmp_path / "detached.pid"
        try:
            result = within(
                5, Executor().run(spec(f"setsid sleep 30 & echo $! > {pid_file}"))
            )
        finally:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)

        assert result.exit_code == 0
        assert "a process that left its group still holds it" in result.output


class TestCannotStart:
    def test_a_missing_cwd_cannot_start(self) -> None:
        result = run("true", cwd="/nope")

        assert result.exit_code == -1
        assert not result.success
        assert result.output == (
            "[dcron: could not start: [Errno 2] No such file or directory: '/nope']\n"
        )

    def test_a_missing_program_without_a_shell_cannot_start(self) -> None:
        result = run("no-such-program --now", shell=False)

        assert result.exit_code == -1
        assert "could not start: [Errno 2] No such file or directory" in result.output

    def test_a_file_that_is_not_executable_cannot_start(self, tmp_path: Path) -> None:
        script = tmp_path / "script.sh"
        script.write_text("#!/bin/sh\necho hi\n")
        script.chmod(0o644)

        result = run(str(script), shell=False)

        assert result.exit_code == -1
        assert "could not start: [Errno 13] Permission denied" in result.output

    def test_unbalanced_quotes_without_a_shell_cannot_start(self) -> None:
        result = run("echo 'oops", shell=False)

        assert result.exit_code == -1
        assert result.output == "[dcron: could not start: No closing quotation]\n"

    def test_with_a_shell_a_missing_program_is_exit_127(self) -> None:
        result = run("no-such-program")

        assert result.exit_code == 127
        assert "no-such-program" in result.output

    def test_an_execution_id_already_running_cannot_start_twice(self) -> None:
        async def scenario() -> RunResult:
            ex = Executor()
            job = spec("sleep 30")
            first = await started(ex, job)
            second = await ex.run(job)
            await ex.terminate(job.execution_id, "test over")
            await first
            return second

        result = asyncio.run(scenario())

        assert result.exit_code == -1
        assert "already running" in result.output


class TestRunningExecutions:
    def test_running_lists_executions_in_progress(self) -> None:
        async def scenario() -> tuple[list[str], list[str]]:
            ex = Executor()
            job = spec("echo ready; sleep 30")
            task = await started(ex, job)
            during = ex.running()
            await ex.terminate(job.execution_id, "test over")
            await task
            return during, ex.running()

        during, after = asyncio.run(scenario())

        assert len(during) == 1
        assert after == []

    def test_output_so_far_shows_what_a_running_execution_printed(self) -> None:
        async def scenario() -> tuple[str | None, str | None]:
            ex = Executor()
            job = spec("echo halfway; sleep 30")
            task = await started(ex, job)
            await printed(ex, job, "halfway")
            so_far = ex.output_so_far(job.execution_id)
            await ex.terminate(job.execution_id, "test over")
            await task
            return so_far, ex.output_so_far(job.execution_id)

        so_far, after = asyncio.run(scenario())

        assert so_far == "halfway\n"
        assert after is None

    def test_output_so_far_of_an_unknown_execution_is_none(self) -> None:
        assert Executor().output_so_far("nope") is None

    def test_terminate_stops_the_run_and_notes_the_reason(self) -> None:
        async def scenario() -> tuple[bool, RunResult]:
            ex = Executor()
            job = spec("echo working; sleep 30")
            task = await started(ex, job)
            await printed(ex, job, "working")
            stopped = await ex.terminate(job.execution_id, "cancelled by alice")
            return stopped, await task

        stopped, result = within(5, scenario())

        assert stopped
        assert not result.success
        assert not result.timed_out
        assert result.exit_code == 128 + signal.SIGTERM
        assert result.output == (
            "working\n[dcron: terminated: cancelled by alice; sent SIGTERM]\n"
        )

    def test_a_terminated_run_is_a_failure_even_if_it_exits_zero(self) -> None:
        async def scenario() -> RunResult:
            ex = Executor()
            job = spec("trap 'exit 0' TERM; echo ready; sleep 30 & wait")
            task = await started(ex, job)
            await printed(ex, job, "ready")
            await ex.terminate(job.execution_id, "cancelled by alice")
            return await task

        result = within(5, scenario())

        assert result.exit_code == 0
        assert not result.success

    def test_terminate_of_an_unknown_execution_returns_false(self) -> None:
        assert not asyncio.run(Executor().terminate("nope", "why not"))


class TestShutdown:
    def test_shutdown_stops_every_run_and_their_results_say_so(self) -> None:
        async def scenario() -> list[RunResult]:
            ex = Executor()
            polite = spec("echo polite; sleep 30")
            stubborn = spec("trap '' TERM; echo stubborn; sleep 30")
            tasks = [await started(ex, polite), await started(ex, stubborn)]
            await printed(ex, polite, "polite")
            await printed(ex, stubborn, "stubborn")
            await ex.shutdown(grace_s=0.3)
            assert all(task.done() for task in tasks)
            assert ex.running() == []
            return [task.result() for task in tasks]

        polite, stubborn = within(5, scenario())

        note = "[dcron: stopped because the node shut down; sent SIGTERM]\n"
        assert polite.output == "polite\n" + note
        assert polite.exit_code == 128 + signal.SIGTERM
        assert stubborn.output == (
            "stubborn\n"
            + note
            + "[dcron: still running 0.3s after SIGTERM; sent SIGKILL]\n"
        )
        assert stubborn.exit_code == 128 + signal.SIGKILL
        assert not polite.success and not stubborn.success

    def test_after_shutdown_nothing_starts(self) -> None:
        async def scenario() -> RunResult:
            ex = Executor()
            await ex.shutdown(grace_s=1)
            return await ex.run(spec("true"))

        result = asyncio.run(scenario())

        assert result.exit_code == -1
        assert "shutting down" in result.output


class TestLogging:
    def test_start_and_finish_are_logged_naming_the_ids(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="dcron.executor")
        job = spec("exit 2")

        asyncio.run(Executor().run(job))

        lines = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert lines[0][0] == logging.INFO
        assert lines[0][1].startswith(
            f"job backup execution {job.execution_id} started"
        )
        assert lines[-1][0] == logging.WARNING
        assert lines[-1][1].startswith(
            f"job backup execution {job.execution_id} exited 2 in "
        )


def reaped(pid: int) -> bool:
    """Whether ``pid`` is gone entirely: exited and reaped, not a zombie."""
    return not Path(f"/proc/{pid}").exists()


class TestStartedTogether:
    def test_fifty_runs_started_in_one_callback_each_report_their_own_end(
        self,
    ) -> None:
        jobs = [spec(f"echo run {i}; exit {i % 7}") for i in range(50)]

        async def scenario() -> tuple[
            list[StartedRun | RunResult], list[RunResult], list[int | None]
        ]:
            ex = Executor()
            prepared = [ex.prepare(job) for job in jobs]
            started = [ex.start(ready) for ready in prepared]
            handles = [s for s in started if isinstance(s, StartedRun)]
            supervised = [asyncio.ensure_future(ex.supervise(s)) for s in handles]
            pids = [await ex.pid(job.execution_id) for job in jobs]
            return started, await asyncio.gather(*supervised), pids

        started, results, pids = within(20, scenario())

        assert all(isinstance(s, StartedRun) for s in started)
        assert [r.exit_code for r in results] == [i % 7 for i in range(50)]
        assert [r.output for r in results] == [f"run {i}\n" for i in range(50)]
        assert len(set(pids)) == 50
        assert all(pid is not None and reaped(pid) for pid in pids)

    def test_started_at_is_taken_before_the_process_runs(self) -> None:
        async def scenario() -> RunResult:
            ex = Executor()
            started = ex.start(ex.prepare(spec("exec date +%s%N")))
            assert isinstance(started, StartedRun)
            return await ex.supervise(started)

        result = asyncio.run(scenario())

        assert int(result.output) >= result.started_at.timestamp() * 1e9 - 1000

    def test_output_printed_before_supervision_begins_is_kept(self) -> None:
        async def scenario() -> RunResult:
            ex = Executor()
            started = ex.start(ex.prepare(spec("echo early")))
            assert isinstance(started, StartedRun)
            await asyncio.sleep(0.3)
            return await ex.supervise(started)

        result = asyncio.run(scenario())

        assert result.output == "early\n"
        assert result.exit_code == 0

    def test_a_run_leaves_no_zombie_and_no_warning(self) -> None:
        async def scenario() -> int:
            ex = Executor()
            started = ex.start(ex.prepare(spec("exit 4")))
            assert isinstance(started, StartedRun)
            supervised = asyncio.ensure_future(ex.supervise(started))
            pid = await ex.pid(started.spec.execution_id)
            await supervised
            ex.close()
            assert pid is not None
            return pid

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pid = asyncio.run(scenario())
            gc.collect()

        assert reaped(pid)
        assert [str(w.message) for w in caught] == []

    def test_a_spawn_failure_is_a_result_not_an_exception(self) -> None:
        async def scenario() -> tuple[list[RunResult], list[str]]:
            ex = Executor()
            outcomes = [
                ex.start(ex.prepare(spec("true", cwd="/nope"))),
                ex.start(ex.prepare(spec("no-such-program", shell=False))),
                ex.start(ex.prepare(spec("echo 'oops", shell=False))),
            ]
            # A command that cannot be split fails at once; the spawner
            # reports the others, through their supervision.
            assert [type(o) for o in outcomes] == [StartedRun, StartedRun, RunResult]
            results = [
                o if isinstance(o, RunResult) else await ex.supervise(o)
                for o in outcomes
            ]
            return results, ex.running()

        (missing_cwd, missing_program, unbalanced), running = within(5, scenario())

        assert running == []
        assert not (missing_cwd.started or missing_program.started)
        assert missing_cwd.exit_code == -1
        assert missing_cwd.output == (
            "[dcron: could not start: [Errno 2] No such file or directory: '/nope']\n"
        )
        assert missing_program.exit_code == -1
        assert "could not start: [Errno 2]" in missing_program.output
        assert unbalanced.output == "[dcron: could not start: No closing quotation]\n"

    def test_a_timeout_still_kills_the_group(self) -> None:
        async def scenario() -> RunResult:
            ex = Executor()
            started = ex.start(
                ex.prepare(spec("echo waiting; sleep 30", timeout_s=0.3))
            )
            assert isinstance(started, StartedRun)
            return await ex.supervise(started)

        result = within(5, scenario())

        assert result.timed_out
        assert result.exit_code == 128 + signal.SIGTERM
        assert result.output == (
            "waiting\n[dcron: timed out after 0.3s; sent SIGTERM]\n"
        )

    def test_terminate_before_supervision_begins_stops_the_run(self) -> None:
        async def scenario() -> RunResult:
            ex = Executor()
            started = ex.start(ex.prepare(spec("sleep 30")))
            assert isinstance(started, StartedRun)
            terminating = asyncio.ensure_future(
                ex.terminate(started.spec.execution_id, "replaced")
            )
            result = await ex.supervise(started)
            assert await terminating
            return result

        result = within(5, scenario())

        assert result.exit_code == 128 + signal.SIGTERM
        assert not result.success
        assert result.output == "[dcron: terminated: replaced; sent SIGTERM]\n"

    def test_shutdown_waits_for_a_run_not_yet_supervised(self) -> None:
        async def scenario() -> tuple[RunResult, RunResult]:
            ex = Executor()
            started = ex.start(ex.prepare(spec("sleep 30")))
            assert isinstance(started, StartedRun)
            stopping = asyncio.ensure_future(ex.shutdown(grace_s=1))
            result = await ex.supervise(started)
            await stopping
            return result, await ex.run(spec("true"))

        result, later = within(5, scenario())

        assert result.exit_code == 128 + signal.SIGTERM
        assert "node shut down" in result.output
        assert later.exit_code == -1
        assert "shutting down" in later.output


class TestSpawner:
    """The helper process that forks the commands, and what if it dies."""

    def test_a_run_in_flight_when_the_spawner_dies_ends_with_its_status_lost(
        self,
    ) -> None:
        async def scenario() -> tuple[RunResult, RunResult, int, int]:
            ex = Executor()
            job = spec("echo begun; sleep 0.5; exit 3")
            running = await started(ex, job)
            await printed(ex, job, "begun")
            assert ex._spawner is not None
            first = ex._spawner.process.pid
            os.kill(first, signal.SIGKILL)
            in_flight = await running
            later = await ex.run(spec("echo after; exit 5"))
            assert ex._spawner is not None
            second = ex._spawner.process.pid
            ex.close()
            return in_flight, later, first, second

        in_flight, later, first, second = within(10, scenario())

        assert in_flight.exit_code == executor.EXIT_STATUS_LOST
        assert not in_flight.success
        assert in_flight.output == (
            "begun\n[dcron: exit status lost: the process spawner exited]\n"
        )
        # The command itself was not stopped: it ran its half second.
        assert (in_flight.finished_at - in_flight.started_at).total_seconds() >= 0.5
        assert (later.exit_code, later.output) == (5, "after\n")
        assert second != first
        assert reaped(first) and reaped(second)

    def test_exits_are_reported_while_requests_keep_coming(self) -> None:
        # Requests faster than the spawner forks: it always has more waiting,
        # and must still reap and report between them.
        jobs = [spec("true") for _ in range(3000)]

        async def scenario() -> tuple[float, float]:
            ex = Executor()
            ex.open()
            first_done = asyncio.ensure_future(ex.run(jobs[0]))
            first_done.add_done_callback(lambda _: marks.setdefault("first", now()))
            pending = [first_done]
            for i in range(1, len(jobs), 100):
                for job in jobs[i : i + 100]:
                    pending.append(asyncio.ensure_future(ex.run(job)))
                await asyncio.sleep(0.02)
            await ex.pid(jobs[-1].execution_id)
            last_spawned = now()
            results = await asyncio.gather(*pending)
            ex.close()
            assert all(r.exit_code == 0 for r in results)
            return marks["first"], last_spawned

        marks: dict[str, float] = {}
        now = time.monotonic
        first_reported, last_spawned = within(60, scenario())

        assert first_reported < last_spawned

    def test_room_waits_until_the_spawner_has_started_enough(self) -> None:
        async def scenario() -> tuple[int, int, list[RunResult]]:
            ex = Executor()
            ex.open()
            await ex.room(1)
            runs = [asyncio.ensure_future(ex.run(spec("true"))) for _ in range(40)]
            await asyncio.sleep(0)
            handed = ex.unstarted
            await ex.room(5)
            left = ex.unstarted
            results = await asyncio.gather(*runs)
            ex.close()
            return handed, left, results

        handed, left, results = within(20, scenario())

        assert handed == 40
        assert left < 5
        assert all(r.exit_code == 0 for r in results)

    def test_the_spawner_holds_no_descriptor_of_the_node(self) -> None:
        async def scenario() -> tuple[list[str], list[str]]:
            ex = Executor()
            ex.open()
            assert ex._spawner is not None
            # Opened after the spawner started: the commands it forks later
            # see none of them, nor does the spawner itself.
            held = [os.open("/dev/null", os.O_RDONLY) for _ in range(200)]
            try:
                result = await ex.run(spec("ls /proc/self/fd"))
                helper = os.listdir(f"/proc/{ex._spawner.process.pid}/fd")
            finally:
                for fd in held:
                    os.close(fd)
                ex.close()
            return result.output.split(), helper

        command, helper = within(10, scenario())

        # stdin, stdout, stderr, and the directory ls reads.
        assert command == ["0", "1", "2", "3"]
        assert len(helper) < 12

    def test_a_request_too_large_for_a_packet_still_runs(self) -> None:
        # Each under the kernel's 128 KiB bound on one argument or variable,
        # together over the spawner's packet.
        words = "x" * (100 * 1024)
        env = {"BIG": "y" * (100 * 1024)}
        result = run(f'printf %s "{words}" | wc -c; printf %s "$BIG" | wc -c', env=env)

        assert result.output.split() == [str(100 * 1024)] * 2

    def test_the_spawner_leaves_when_its_node_dies_and_commands_go_on(
        self, tmp_path: Path
    ) -> None:
        pids = tmp_path / "pids"
        marker = tmp_path / "finished"
        run_and_die(
            f"job = RunSpec('e1', 'j', 'sleep 0.5; touch {marker}')",
            "ex.start(ex.prepare(job))",
            "pid = await ex.pid('e1')",
            f"open('{pids}', 'w').write(f'{{ex._spawner.process.pid}} {{pid}}')",
        )
        spawner, command = map(int, pids.read_text().split())

        wait_until_gone(spawner)
        wait_until_gone(command)
        assert marker.exists()


class TestSpawnedAhead:
    """Shell runs spawned before their slot, held at a gate until release()."""

    def test_the_command_begins_at_release_and_times_from_there(
        self, tmp_path: Path
    ) -> None:
        marker = tmp_path / "began"
        job = spec(f"date +%s%N > {marker}; cat; exit 4", timeout_s=1.0)

        async def scenario() -> tuple[float, float, RunResult]:
            ex = Executor()
            gate = ex.gate()
            ahead = ex.start(ex.prepare(job), gate)
            assert isinstance(ahead, StartedRun)
            supervised = asyncio.ensure_future(ex.supervise(ahead))
            # Held longer than its timeout: the timeout counts from release.
            held_until = time.monotonic() + 1.5
            await eventually(lambda: time.monotonic() > held_until, what="hold")
            assert not marker.exists()
            released_at = time.time()
            assert ex.release(gate) == 1
            assert ex.release(gate) == 0
            result = await supervised
            return released_at, int(marker.read_text()) / 1e9, result

        released_at, began_at, result = within(10, scenario())

        assert began_at >= released_at
        assert result.started_at.timestamp() >= released_at - 0.001
        # stdin is /dev/null once released: cat ends at once, no timeout.
        assert result.exit_code == 4
        assert not result.timed_out
        assert result.started

    def test_one_release_lets_every_run_at_the_gate_begin_once(
        self, tmp_path: Path
    ) -> None:
        # Each shell takes one line of the gate's pipe; one left without
        # would wait for ever, one taking two would leave another without.
        count = 40
        began = tmp_path / "began"
        jobs = [spec(f"echo $DCRON_EXECUTION_ID >> {began}") for _ in range(count)]

        async def scenario() -> list[RunResult]:
            ex = Executor()
            gate = ex.gate()
            ahead = [ex.start(ex.prepare(job), gate) for job in jobs]
            supervised = [
                asyncio.ensure_future(ex.supervise(run))
                for run in ahead
                if isinstance(run, StartedRun)
            ]
            assert len(supervised) == count
            # Every shell at its gate before the release.
            for job in jobs:
                assert await ex.pid(job.execution_id) is not None
            assert not began.exists()
            assert ex.release(gate) == count
            return await asyncio.gather(*supervised)

        results = within(20, scenario())

        assert all(r.started and r.exit_code == 0 for r in results)
        assert len({r.started_at for r in results}) == 1
        assert sorted(began.read_text().split()) == sorted(
            job.execution_id for job in jobs
        )

    def test_a_full_gate_takes_no_more_runs(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(executor, "GATE_RUNS_MAX", 2)

        async def scenario() -> list[RunResult]:
            ex = Executor()
            gate = ex.gate()
            ahead = [ex.start(ex.prepare(spec("true")), gate) for _ in range(2)]
            assert gate.full
            with pytest.raises(ValueError):
                ex.start(ex.prepare(spec("true")), gate)
            supervised = [ex.supervise(run) for run in ahead]  # type: ignore[arg-type]
            ex.release(gate)
            return await asyncio.gather(*supervised)

        results = within(10, scenario())

        assert [r.exit_code for r in results] == [0, 0]

    def test_a_cancelled_gate_runs_no_command(self, tmp_path: Path) -> None:
        ran = tmp_path / "ran"
        jobs = [spec(f"touch {ran}") for _ in range(3)]

        async def scenario() -> list[RunResult]:
            ex = Executor()
            gate = ex.gate()
            ahead = [ex.start(ex.prepare(job), gate) for job in jobs]
            supervised = [ex.supervise(run) for run in ahead]  # type: ignore[arg-type]
            assert ex.cancel(gate, "the node stopped first") == 3
            assert ex.release(gate) == 0
            return await asyncio.gather(*supervised)

        results = within(10, scenario())

        assert not ran.exists()
        for result in results:
            assert not result.started
            assert result.exit_code == -1
            assert "could not start: the node stopped first" in result.output

    def test_a_run_terminated_at_the_gate_leaves_the_others_held(
        self, tmp_path: Path
    ) -> None:
        ran = tmp_path / "ran"
        stopped, kept = spec(f"echo stopped >> {ran}"), spec(f"echo kept >> {ran}")

        async def scenario() -> tuple[RunResult, RunResult]:
            ex = Executor()
            gate = ex.gate()
            first = ex.start(ex.prepare(stopped), gate)
            second = ex.start(ex.prepare(kept), gate)
            assert isinstance(first, StartedRun) and isinstance(second, StartedRun)
            supervised = asyncio.ensure_future(ex.supervise(first))
            other = asyncio.ensure_future(ex.supervise(second))
            assert await ex.terminate(stopped.execution_id, "replaced by a newer run")
            result = await supervised
            assert ex.release(gate) == 1
            return result, await other

        result, other = within(10, scenario())

        assert not result.started
        assert "terminated: replaced by a newer run" in result.output
        assert other.started and other.exit_code == 0
        assert ran.read_text() == "kept\n"

    def test_the_command_never_runs_when_the_node_dies_first(
        self, tmp_path: Path
    ) -> None:
        # A process that spawns runs ahead and dies: the gate's pipe closes
        # with no line in it, and the shells leave without their commands.
        marker = tmp_path / "ran"
        pids = tmp_path / "pids"
        proc = run_and_die(
            "gate = ex.gate()",
            f"jobs = [RunSpec(f'e{{i}}', 'j', 'touch {marker}') for i in range(3)]",
            "[ex.start(ex.prepare(job), gate) for job in jobs]",
            "found = [str(await ex.pid(job.execution_id)) for job in jobs]",
            f"open('{pids}', 'w').write(' '.join(found))",
        )
        assert proc.returncode == 0
        for shell in map(int, pids.read_text().split()):
            wait_until_gone(shell)
        assert not marker.exists()

    def test_only_shell_runs_are_held(self) -> None:
        ex = Executor()
        assert ex.prepare(spec("true")).gateable
        assert not ex.prepare(spec("/bin/true", shell=False)).gateable
        assert not ex.prepare(spec("'unbalanced", shell=False)).gateable
