"""One dcron node: builds the store, replication, scheduler, executor and API,
starts them in order and stops them in reverse.

The node is also where committed commands turn into side effects. The store
tells it what each applied command did; the node then re-plans the scheduler
(on the leader) and starts the runs assigned to it. A run's process starts only
after its ``fire`` is committed, and never for a command seen again during a
journal replay: the store skips those before the node hears of them.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

from dcron import __version__, jobs, schedule, systemd
from dcron.api import make_app
from dcron.config import Config, check_data_dir
from dcron.errors import Conflict, DcronError, NotFound, Unavailable
from dcron.executor import Executor, Gate, PreparedRun, RunResult, RunSpec, StartedRun
from dcron.health import HealthMonitor
from dcron.replication import (
    KeyRefused,
    RaftSettings,
    Replica,
    admin,
    cluster_of,
)
from dcron.scheduler import Scheduler
from dcron.store import Store

logger = logging.getLogger(__name__)

FINISH_RETRY_S = 0.5
# Outcomes that arrive within this many seconds share one raft entry.
FINISH_BATCH_S = 0.01
# A run assigned to this node that has not started this long after its start
# time never will: its fire reached the node in a snapshot, not as a command.
STALE_RUN_S = 10.0
# An agent that answered health this recently can be given a run.
PLACEABLE_WITHIN_S = 3.0
PLACEMENT_CACHE_S = 0.2
JOIN_TIMEOUT_S = 60.0
JOIN_RETRY_S = 1.0
EXIT_JOIN_FAILED = 1
LEAVE_TIMEOUT_S = 5.0
TERM_GRACE_S = 5.0
GIL_SWITCH_S = 0.0005
# A shell run whose start is further away than this when its fire commits is
# spawned at once and held at its gate until its start time.
GATE_AHEAD_MIN_S = 0.005
# Runs are spawned ahead in slices of at most this long, so the requests, the
# outcomes and the start timers that come due meanwhile wait at most this long:
# handing a run to the spawner (its pipes, its request) takes tens of
# microseconds, and a burst of ten thousand in one callback would hold the
# loop for a good part of a second.
SPAWN_SLICE_S = 0.002
# Runs handed to the spawner and not yet started, past which a manual run's
# request and the scheduler's next fire wait (Executor.room). At the rate a
# node sustains, a second's runs are started before the next second's fire
# is due, so only work the node could not start anyway waits.
SPAWN_BACKLOG_MAX = 1024
Ready = PreparedRun | StartedRun | RunResult
RAFT_STATES = {0: "follower", 1: "candidate", 2: "leader"}


class JoinRefused(Exception):
    """This node could not join the cluster named by --join."""


class Node:
    """A running dcron node."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = config.node_name
        self.ready = False
        self.stopping = False
        self.started_at = time.time()
        self._runs: set[str] = set()
        # Runs waiting for their start time, by that time (one timer each),
        # then by execution id: prepared, spawned ahead and held at their
        # gate, or already known not to start.
        self._due: dict[float, dict[str, tuple[dict[str, Any], Ready]]] = {}
        # The gates the runs spawned ahead for an instant wait at, the one
        # still taking runs last.
        self._gates: dict[float, list[Gate]] = {}
        # (start time, execution id) of the prepared runs to spawn ahead.
        self._ahead: deque[tuple[float, str]] = deque()
        self._spawning = False
        self._placements = itertools.count()
        self._finishing: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._placement_cache: (
            tuple[float, list[dict[str, Any]], dict[str, int]] | None
        ) = None
        self._stopped = asyncio.Event()
        self.store: Store
        self.replica: Replica
        self.scheduler: Scheduler
        self.executor = Executor()
        self.http: HTTPServer | None = None
        self.http_port = 0
        self._loop: IOLoop

    # ---- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        self._loop = IOLoop.current()
        systemd.claim_socket()
        # The process that forks job commands, started while this one holds
        # few descriptors (dcron.executor).
        self.executor.open()
        data_dir = check_data_dir(self.config.data_dir)
        self.store = Store(
            os.path.join(data_dir, "dcron.db"), self.config.store_max_bytes
        )
        self.store.on_applied = self._on_applied
        self._monitor = HealthMonitor(
            self.name, self.store.members, self._on_health_round
        )
        self.scheduler = Scheduler(
            self.store, self._submit_fires, self.place, self.config.executions_per_job
        )
        self._warn_if_open()
        partners = await self._partners()
        # An agent follows the log as a pysyncobj read-only node: no raft
        # address of its own, no vote.
        raft_addr = self.config.raft_address if self.config.server else None
        self.replica = Replica(
            RaftSettings(
                self_addr=raft_addr,
                partners=partners,
                data_dir=data_dir,
                bind_addr=raft_addr,
                password=self.config.encrypt or None,
                compaction_entries=self.config.raft_compaction_entries,
                max_pending=self.config.max_pending_commands,
            ),
            self.store,
            on_state_changed=self._on_leadership,
            on_ready=self._on_ready,
        )
        if partners and self.config.encrypt:
            self._loop.run_in_executor(None, self._check_key, partners)

        host, port = self.config.http_addr
        # Tornado refuses oversized bodies by closing the connection; the API
        # checks the configured bound itself so the client gets a 413 body.
        self.http = HTTPServer(
            make_app(self), max_body_size=self.config.max_body_bytes * 4 + 65536
        )
        sockets = self.http_sockets(host, port)
        self.http.add_sockets(sockets)
        self.http_port = sockets[0].getsockname()[1]
        logger.info(
            "node %s serving http on %s:%d, raft on %s",
            self.name,
            host,
            self.http_port,
            self.config.raft_address,
        )

    def _warn_if_open(self) -> None:
        if not self.config.server:
            return
        host = self.config.raft_addr[0]
        if (
            not self.config.encrypt
            and not host.startswith("127.")
            and host
            not in (
                "localhost",
                "::1",
            )
        ):
            logger.warning(
                "raft address %s is not loopback and --encrypt is not set: "
                "anyone who reaches it can change jobs",
                self.config.raft_address,
            )

    async def _partners(self) -> tuple[str, ...]:
        """The other voting servers this node starts with.

        A node with state takes them from its store (the cluster as it was
        committed). A fresh node either bootstraps with the servers named by
        --join, when they make up --bootstrap-expect, or joins a running
        cluster: it asks one of them for the cluster, has itself added as a
        voter, and starts with the whole list.
        """
        me = self.config.raft_address if self.config.server else ""
        join = tuple(dict.fromkeys(a for a in self.config.join if a != me))
        known = tuple(
            m["raft_addr"]
            for m in self.store.members()
            if m["server"] and not m["left"] and m["raft_addr"] != me
        )
        if self.store.last_applied > 0 and (known or join):
            return known or join
        if not self.config.server:
            if not join:
                raise JoinRefused("--join: an agent needs the raft address of a server")
            return await self._loop.run_in_executor(None, self._find_servers, join)
        if not join:
            return ()
        if (
            self.config.bootstrap_expect
            and len(join) + 1 >= self.config.bootstrap_expect
        ):
            return join
        return await self._loop.run_in_executor(None, self._join_running, join)

    def _join_running(self, join: tuple[str, ...]) -> tuple[str, ...]:
        """Ask a server of a running cluster to add this node (worker thread)."""
        me = self.config.raft_address

        def add_me(leader: str, servers: list[str]) -> tuple[str, ...] | None:
            others = tuple(a for a in servers if a != me)
            if me in servers:
                return others
            reply = admin(leader, ["add", me], self.config.encrypt or None)
            if isinstance(reply, str) and reply.startswith("SUCCESS"):
                logger.info("node %s joined the cluster through %s", self.name, leader)
                return others
            logger.warning("leader %s did not add %s: %s", leader, me, reply)
            return None

        return self._ask_cluster(join, add_me)

    def _find_servers(self, join: tuple[str, ...]) -> tuple[str, ...]:
        """The voting servers an agent follows (worker thread)."""
        return self._ask_cluster(join, lambda leader, servers: tuple(servers))

    def _ask_cluster(
        self,
        join: tuple[str, ...],
        act: Callable[[str, list[str]], tuple[str, ...] | None],
    ) -> tuple[str, ...]:
        """Ask the --join servers for their cluster until ``act`` settles it.

        ``act`` gets the leader and the voting servers and returns the peers
        to start with, or None to ask again. Runs on a worker thread.
        """
        password = self.config.encrypt or None
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while time.monotonic() < deadline and not self.stopping:
            for addr in join:
                try:
                    leader, servers = cluster_of(addr, password)
                except KeyRefused:
                    raise JoinRefused(
                        f"raft peer {addr} refused this node's encryption key; "
                        "check --encrypt"
                    ) from None
                if leader is None:
                    continue
                peers = act(leader, servers)
                if peers is not None:
                    return peers
            time.sleep(JOIN_RETRY_S)
        raise JoinRefused(
            f"no server of {', '.join(join)} answered within {JOIN_TIMEOUT_S:.0f}s"
        )

    def _check_key(self, partners: tuple[str, ...]) -> None:
        """Say loudly when a peer drops us for a key mismatch (worker thread)."""
        for addr in partners:
            try:
                cluster_of(addr, self.config.encrypt)
            except KeyRefused:
                logger.error(
                    "raft peer %s refused this node's encryption key; check --encrypt",
                    addr,
                )

    @staticmethod
    def http_sockets(host: str, port: int) -> list[Any]:
        from tornado.netutil import bind_sockets

        return bind_sockets(port, address=host)

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.request_stop)
        await self._stopped.wait()

    def request_stop(self) -> None:
        if not self.stopping:
            logger.info("node %s stopping", self.name)
            IOLoop.current().add_callback(self.stop)

    async def stop(self) -> None:
        """Stop taking work, let running jobs finish, record them, close."""
        if self.stopping:
            return
        self.stopping = True
        systemd.notify("STOPPING=1")
        if self.http is not None:
            self.http.stop()
        self._monitor.stop()
        self.scheduler.stop()
        for start_at in list(self._due):
            self._not_run(start_at)
        # Running jobs get the grace period to finish on their own; what is
        # still running then is terminated (SIGTERM, then SIGKILL).
        deadline = time.time() + self.config.shutdown_grace
        while self.executor.running() and time.time() < deadline:
            await asyncio.sleep(0.05)
        await self.executor.shutdown(TERM_GRACE_S)
        self.executor.close()
        # Give the finish commands of the stopped runs a moment to commit.
        deadline = time.time() + 5.0
        while self._runs and time.time() < deadline:
            await asyncio.sleep(0.05)
        self.replica.destroy()
        self.store.close()
        logger.info("node %s stopped", self.name)
        self._stopped.set()

    # ---- replication hooks -------------------------------------------------

    async def submit(self, command: dict[str, Any]) -> dict[str, Any]:
        return await self.replica.submit(command)

    async def spawn_room(self) -> None:
        """Wait while this node has more runs waiting to start than it holds."""
        await self.executor.room(SPAWN_BACKLOG_MAX)

    async def _submit_fires(self, command: dict[str, Any]) -> dict[str, Any]:
        await self.spawn_room()
        return await self.submit(command)

    def _on_leadership(self, leading: bool) -> None:
        if leading and self.ready and not self.stopping:
            self._monitor.restart_grace()
            self.scheduler.start()
        elif not leading:
            self.scheduler.stop()

    async def _on_health_round(self) -> None:
        """After each health round: the leader closes the runs of dead nodes."""
        if self.stopping or not self.ready:
            return
        await self._close_stale_runs(
            "its fire reached this node but the run never started",
            older_than=time.time() - STALE_RUN_S,
        )
        if not self.scheduler.running:
            return
        members = {m["name"]: m for m in self.store.members()}
        lost: dict[str, list[str]] = {}
        for run in self.store.open_executions():
            member = members.get(run["node_name"])
            if member is None or not self.alive(member):
                lost.setdefault(run["node_name"], []).append(run["id"])
        for node_name, ids in lost.items():
            logger.warning(
                "node %s is not answering: %d runs lost", node_name, len(ids)
            )
            stamp = schedule.format_time(datetime.now(UTC))
            await self._submit_until_committed(
                {
                    "op": "interrupt",
                    "status": "lost",
                    "execution_ids": ids,
                    "at": time.time(),
                    "reason": f"\n[dcron: lost: node {node_name} stopped answering; "
                    f"closed at {stamp}]\n",
                    "retry_backoff": self.config.retry_backoff,
                }
            )

    async def _on_ready(self) -> None:
        """Caught up with the log: announce this node and close stale runs."""
        self.ready = True
        member = {
            "name": self.name,
            "http_addr": f"{self.advertised_host()}:{self.http_port}",
            "raft_addr": self.config.raft_address if self.config.server else "",
            "tags": self.config.tags,
            "server": self.config.server,
        }
        await self._submit_until_committed(
            {"op": "member_up", "member": member, "at": time.time()}
        )
        await self._close_stale_runs(
            f"node {self.name} restarted while the job was running"
        )
        self._monitor.start()
        if self.replica.is_leader():
            self.scheduler.start()
        # What exists now (modules, the store's jobs) lives as long as the
        # node: exempt it from the collector, whose full passes over it took
        # ~30 ms on the loop, enough to make a slot's runs late.
        gc.freeze()
        systemd.notify(f"READY=1\nSTATUS=node {self.name} serving")

    async def _close_stale_runs(
        self, why: str, older_than: float | None = None
    ) -> None:
        """Close runs the store assigns to this node but no process of ours runs.

        After a restart these are the runs the old process left; later they
        can only be runs whose fire reached this node through a snapshot.
        """
        stale = [
            run["id"]
            for run in self.store.open_executions(self.name)
            if run["id"] not in self._runs
            and (older_than is None or run["started_at"] < older_than)
        ]
        if not stale:
            return
        logger.warning("closing %d runs on %s: %s", len(stale), self.name, why)
        await self._submit_until_committed(
            {
                "op": "interrupt",
                "execution_ids": stale,
                "at": time.time(),
                "reason": f"\n[dcron: interrupted: {why}]\n",
                "retry_backoff": self.config.retry_backoff,
            }
        )

    def advertised_host(self) -> str:
        host = self.config.http_addr[0]
        if host in ("0.0.0.0", "::", ""):
            return self.config.raft_addr[0]
        return host

    def _on_applied(self, command: dict[str, Any], result: dict[str, Any]) -> None:
        """Called on the tick thread after each command; hands work to the loop."""
        loop = self._loop
        op = command.get("op")
        if op == "batch":
            for sub, sub_result in zip(
                command["commands"], result.get("results", ()), strict=False
            ):
                self._on_applied(sub, sub_result)
            return
        if op in ("put_job", "toggle_job", "delete_job"):
            name = command["job"]["name"] if op == "put_job" else command["name"]
            loop.add_callback(self.scheduler.job_changed, name)
        elif op == "fire":
            if not self.ready:
                return
            for execution in result.get("executions", ()):
                if execution["node_name"] == self.name:
                    loop.add_callback(self._start_run, execution, result["job"])
            for old in result.get("replaced", ()):
                if old["node_name"] == self.name:
                    note = f"replaced by a newer run of job {command['job']}"
                    loop.add_callback(self.executor.terminate, old["id"], note)
        elif op in ("finish", "interrupt"):
            # A closed run may owe a retry or dependents' runs, and the first
            # success of an ephemeral job deletes it.
            if op == "interrupt" or "owed" in result:
                loop.add_callback(self.scheduler.reload_pending)
            if "deleted_job" in result:
                loop.add_callback(self.scheduler.job_changed, result["deleted_job"])

    # ---- running jobs ------------------------------------------------------

    def _start_run(self, execution: dict[str, Any], job: dict[str, Any]) -> None:
        """Make a run ready and queue it with the others due at its instant.

        Runs come here when their fire commits, normally half a second ahead
        of the slot, and have their argv and environment built now. A shell
        run is also queued to be spawned ahead and held at its gate
        (_spawn_ahead), so that at the slot starting it is one write. All runs
        due at one instant share one timer.
        """
        if self.stopping:
            return
        self._runs.add(execution["id"])
        ready: Ready = self._prepare(execution, job)
        start_at = execution["started_at"]
        due = self._due.get(start_at)
        if due is None:
            due = self._due[start_at] = {}
            self._arm(start_at)
        due[execution["id"]] = (execution, ready)
        if isinstance(ready, PreparedRun) and ready.gateable:
            self._ahead.append((start_at, execution["id"]))
            if not self._spawning:
                self._spawning = True
                self._loop.add_callback(self._spawn_ahead)

    def _spawn_ahead(self) -> None:
        """Spawn queued shell runs held at their gates, one slice at a time.

        A run whose start time comes before its turn is left prepared, and
        _start_due spawns it with the others due then.
        """
        deadline = time.monotonic() + SPAWN_SLICE_S
        while self._ahead and time.monotonic() < deadline:
            start_at, execution_id = self._ahead.popleft()
            # Its instant came, or the node stops: the run is handled there.
            # (The instant's runs may be a later batch fired late for it.)
            due = self._due.get(start_at)
            entry = None if due is None else due.get(execution_id)
            if due is None or entry is None or self.stopping:
                continue
            execution, prepared = entry
            if (
                not isinstance(prepared, PreparedRun)
                or start_at - time.time() <= GATE_AHEAD_MIN_S
            ):
                continue
            gate = self._gate(start_at)
            if gate is None:
                continue
            started = self._launch(execution, prepared, gate)
            due[execution_id] = (execution, started)
            if isinstance(started, StartedRun):
                # Supervised from now: a shell stopped at its gate (the node
                # stopping, the run replaced) is reported like any other.
                self._loop.add_callback(self._run, execution, started, None)
        if self._ahead:
            self._loop.add_callback(self._spawn_ahead)
        else:
            self._spawning = False

    def _gate(self, start_at: float) -> Gate | None:
        """The gate with room for a run due at ``start_at``, made if need be;
        None if no pipe can be made now (the run is spawned at its time)."""
        gates = self._gates.setdefault(start_at, [])
        if not gates or gates[-1].full:
            try:
                gates.append(self.executor.gate())
            except OSError as exc:
                logger.warning("no gate for runs due at %.3f: %s", start_at, exc)
                return None
        return gates[-1]

    def _arm(self, start_at: float) -> None:
        # The timer runs on the loop's monotonic clock; the delay comes from
        # the wall clock the slot is named in.
        delay = max(0.0, start_at - time.time())
        self._loop.call_later(delay, self._start_due, start_at)

    def _prepare(
        self, execution: dict[str, Any], job: dict[str, Any]
    ) -> PreparedRun | RunResult:
        try:
            return self.executor.prepare(self._spec(execution, job))
        except Exception as exc:
            return self._could_not_run(execution, job["name"], exc)

    def _start_due(self, start_at: float) -> None:
        """Start every run due at ``start_at``, back to back, then watch each.

        Runs spawned ahead are released first, one write for each gate; the
        others are spawned after them in this same callback: with a
        coroutine per run, the first would wait for every other run's
        preamble.
        """
        if time.time() < start_at:
            # The loop's clock ran ahead of the wall clock; a run never starts
            # before its time.
            self._arm(start_at)
            return
        if self.stopping:
            self._not_run(start_at)
            return
        due = list(self._due.pop(start_at, {}).values())
        for gate in self._gates.pop(start_at, []):
            self.executor.release(gate)
        for execution, ready in due:
            if not isinstance(ready, StartedRun):
                outcome = self._launch(execution, ready)
                self._loop.add_callback(self._run, execution, outcome, None)

    def _not_run(self, start_at: float) -> None:
        """Record the runs due at ``start_at`` when the node stops first."""
        why = f"node {self.name} shut down before the run started"
        due = self._due.pop(start_at, {}).values()
        # The runs held at these gates are recorded by their supervision.
        for gate in self._gates.pop(start_at, []):
            self.executor.cancel(gate, f"interrupted: {why}")
        now = datetime.now(UTC)
        result = RunResult(
            -1, False, f"[dcron: interrupted: {why}]\n", False, now, now, False, False
        )
        for execution, ready in due:
            if not isinstance(ready, StartedRun):
                self._loop.add_callback(self._run, execution, result, "interrupted")

    def _launch(
        self,
        execution: dict[str, Any],
        prepared: PreparedRun | RunResult,
        gate: Gate | None = None,
    ) -> StartedRun | RunResult:
        if isinstance(prepared, RunResult):
            return prepared
        try:
            return self.executor.start(prepared, gate)
        except Exception as exc:
            return self._could_not_run(execution, prepared.spec.job_name, exc)

    async def _run(
        self,
        execution: dict[str, Any],
        outcome: StartedRun | RunResult,
        status: str | None,
    ) -> None:
        """See one run to its end and commit how it ended."""
        if isinstance(outcome, StartedRun):
            result = await self._execute(execution, outcome)
        else:
            result = outcome
        if status is None and not result.started and self.stopping:
            status = "interrupted"
        await self._finish(
            {
                "op": "finish",
                "execution_id": execution["id"],
                "status": status,
                "started_at": result.started_at.timestamp(),
                "finished_at": result.finished_at.timestamp(),
                "exit_code": result.exit_code,
                "success": result.success,
                "output": result.output,
                "output_truncated": result.output_truncated,
                "retry_backoff": self.config.retry_backoff,
                "keep": self.config.executions_per_job,
            }
        )
        self._runs.discard(execution["id"])

    async def _execute(
        self, execution: dict[str, Any], started: StartedRun
    ) -> RunResult:
        try:
            return await self.executor.supervise(started)
        except Exception as exc:
            return self._could_not_run(execution, started.spec.job_name, exc)

    def _could_not_run(
        self, execution: dict[str, Any], job_name: str, exc: Exception
    ) -> RunResult:
        """The result of a run dcron itself failed; call it from an except block."""
        logger.exception("job %s execution %s could not run", job_name, execution["id"])
        now = datetime.now(UTC)
        output = f"[dcron: could not run: {exc}]\n"
        return RunResult(-1, False, output, False, now, now, False)

    def _spec(self, execution: dict[str, Any], job: dict[str, Any]) -> RunSpec:
        config = job["executor_config"]
        scheduled = datetime.fromtimestamp(execution["scheduled_at"], UTC)
        env = jobs.env_dict(config.get("env") or {})
        env["DCRON_SCHEDULED_AT"] = schedule.format_time(scheduled) or ""
        # Retries of a slot share the first attempt's id, so jobs can use it
        # to make their work idempotent.
        env["DCRON_EXECUTION_ID"] = execution["group"]
        env["DCRON_ATTEMPT"] = str(execution["attempt"])
        env["DCRON_NODE_NAME"] = self.name
        shell = config.get("shell", True)
        return RunSpec(
            execution_id=execution["id"],
            job_name=job["name"],
            command=config["command"],
            shell=shell if isinstance(shell, bool) else shell == "true",
            env=env,
            cwd=config.get("cwd") or None,
            timeout_s=jobs.timeout_seconds(config.get("timeout")),
            output_keep=self.config.output_keep_bytes,
        )

    async def _finish(self, command: dict[str, Any]) -> None:
        """Commit a run's outcome, together with the others that end meanwhile.

        Runs end in bursts when they start in bursts. One raft entry (and one
        SQLite transaction on every node) for a burst's outcomes, instead of
        one each, keeps the tick thread free to send heartbeats on time.
        """
        if not self._finishing:
            self._loop.call_later(FINISH_BATCH_S, self._flush_finishes)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._finishing.append((command, done))
        await done

    def _flush_finishes(self) -> None:
        batch, self._finishing = self._finishing, []
        commands = [command for command, _ in batch]
        combined = (
            commands[0] if len(commands) == 1 else {"op": "batch", "commands": commands}
        )

        async def commit() -> None:
            await self._submit_until_committed(combined)
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

        self._loop.add_callback(commit)

    async def _submit_until_committed(self, command: dict[str, Any]) -> None:
        """Submit a command the cluster must not lose, retrying through elections."""
        while True:
            try:
                await self.submit(command)
                return
            except Unavailable as exc:
                if self.stopping and self.replica is None:
                    return
                logger.warning("retrying %s: %s", command["op"], exc)
                await asyncio.sleep(FINISH_RETRY_S)
            except DcronError:
                logger.exception("command %s refused", command["op"])
                return

    # ---- placement ---------------------------------------------------------

    def place(self, job: dict[str, Any], avoid: str = "") -> list[str]:
        """The nodes one run of ``job`` goes to.

        Every tag key must match. A value ``web:2`` asks for two of the
        matching nodes; tags without a count ask for every matching node, as in
        Dkron; no tags at all ask for one node. Among the candidates the least
        busy go first, taking turns, and ``avoid`` (where a failed attempt ran)
        goes last. The leader puts itself after the other candidates: a run it
        placed on itself is lost if it dies before the slot, while a follower's
        runs survive a failover, and a leader spared the processes keeps its
        heartbeats on time.
        """
        wanted: dict[str, str] = {}
        counts: list[int] = []
        for key, value in job["tags"].items():
            name, _, count = value.partition(":")
            wanted[key] = name
            if count.isdigit() and int(count) > 0:
                counts.append(int(count))
        candidates, busy = self._placement_view()
        matching = [
            m["name"]
            for m in candidates
            if all(m["tags"].get(key) == value for key, value in wanted.items())
        ]
        if not matching:
            return []
        count = min(counts) if counts else (len(matching) if wanted else 1)

        turn = next(self._placements)
        ranked = sorted(matching)
        ranked = ranked[turn % len(ranked) :] + ranked[: turn % len(ranked)]
        leading = self.scheduler.running
        ranked.sort(
            key=lambda name: (
                name == avoid,
                leading and name == self.name,
                busy.get(name, 0),
            )
        )
        return ranked[:count]

    def _placement_view(self) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """The members a run can go to and their open runs, briefly cached.

        A burst places thousands of runs in one IOLoop turn; reading members,
        raft status and open runs once for all of them keeps placement cheap.
        The rotation in ``place`` spreads a burst even though its counts are
        shared.
        """
        now = time.monotonic()
        if self._placement_cache is not None and now < self._placement_cache[0]:
            return self._placement_cache[1], self._placement_cache[2]
        candidates = [m for m in self.store.members() if self._placeable(m)]
        busy = self.store.open_counts()
        self._placement_cache = (now + PLACEMENT_CACHE_S, candidates, busy)
        return candidates, busy

    def _placeable(self, member: dict[str, Any]) -> bool:
        """Whether a run can go to a member now: stricter than ``alive``.

        A server must have a raft link to us this moment; an agent must have
        answered in the last couple of health rounds.
        """
        if member["server"] and member["name"] != self.name and not member["left"]:
            return self._raft_linked(member)
        return self._answered_within(member, PLACEABLE_WITHIN_S)

    def alive(self, member: dict[str, Any]) -> bool:
        """Whether a member answered lately (HTTP health or a raft link)."""
        if member["server"] and not member["left"] and self._raft_linked(member):
            return True
        return self._answered_within(member, self.config.heartbeat_timeout)

    def _raft_linked(self, member: dict[str, Any]) -> bool:
        key = f"partner_node_status_server_{member['raft_addr']}"
        return bool(self.replica.status().get(key) == 2)

    def _answered_within(self, member: dict[str, Any], seconds: float) -> bool:
        if member["name"] == self.name:
            return True
        if member["left"]:
            return False
        return self._monitor.seen_within(member["name"], seconds, member["updated_at"])

    # ---- what the API shows ------------------------------------------------

    def info(self) -> dict[str, Any]:
        status = self.replica.status()
        return {
            "name": self.name,
            "version": __version__,
            "server": self.config.server,
            "role": "server" if self.config.server else "agent",
            "tags": self.config.tags,
            "http_addr": f"{self.advertised_host()}:{self.http_port}",
            "raft_addr": self.config.raft_address,
            "leader": self.leader_name(),
            "raft": {
                "state": RAFT_STATES.get(status.get("state", -1), "unknown"),
                "term": status.get("raft_term"),
                "commit_index": status.get("commit_idx"),
                "last_applied": status.get("last_applied"),
                "log_entries": status.get("log_len"),
                "leader_addr": self.replica.leader_addr(),
            },
            "ready": self.ready,
            "job_count": self.store.job_count(),
            "uptime_s": round(time.time() - self.started_at, 3),
            "scheduler": {
                "running": self.scheduler.running,
                "fired": self.scheduler.fired,
                "caught_up": self.scheduler.caught_up,
                "failed_submits": self.scheduler.failed_submits,
            },
        }

    def _member_view(self, member: dict[str, Any]) -> dict[str, Any]:
        """A member as the API shows it."""
        addr = member["raft_addr"]
        if member["left"]:
            status = "left"
        else:
            status = "alive" if self.alive(member) else "failed"
        if not member["server"]:
            role = "agent"
        elif member["left"]:
            role = "none"
        else:
            role = "leader" if addr == self.replica.leader_addr() else "follower"
        if member["name"] == self.name:
            applied: int | None = self.store.last_applied
        else:
            answer = self._monitor.last_answer(member["name"])
            applied = None if answer is None else answer.get("last_applied")
        return {
            "name": member["name"],
            "http_addr": member["http_addr"],
            "raft_addr": addr,
            "tags": member["tags"],
            "server": member["server"],
            "status": status,
            "role": role,
            "last_applied": applied,
        }

    async def members(self) -> list[dict[str, Any]]:
        return [self._member_view(m) for m in self.store.members()]

    def leader(self) -> dict[str, Any] | None:
        addr = self.replica.leader_addr()
        if addr is None:
            return None
        row = next((m for m in self.store.members() if m["raft_addr"] == addr), None)
        return None if row is None else self._member_view(row)

    def leader_name(self) -> str | None:
        leader = self.leader()
        return None if leader is None else leader["name"]

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "name": self.name,
            "last_applied": self.store.last_applied,
        }

    # ---- leaving -----------------------------------------------------------

    async def leave(self) -> None:
        """Leave the cluster for good, then stop this node."""
        me = self.config.raft_address
        await self._submit_until_committed(
            {"op": "member_left", "name": self.name, "at": time.time()}
        )
        # An agent holds no vote: marking it left is all there is to do.
        others = (
            [str(n.id) for n in self.replica.otherNodes] if self.config.server else []
        )
        if self.replica.is_leader() and others:
            # A leader cannot commit its own removal safely: hand over first.
            self.replica.transferLeadership()
            deadline = time.monotonic() + LEAVE_TIMEOUT_S
            while self.replica.is_leader() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        for addr in others:
            reply = await self._loop.run_in_executor(
                None, self._admin_quietly, addr, ["remove", me]
            )
            if isinstance(reply, str) and reply.startswith("SUCCESS"):
                logger.info("node %s left the cluster", self.name)
                break
        else:
            if others:
                logger.error("node %s could not be removed from raft", self.name)
        self.request_stop()

    def _admin_quietly(self, addr: str, message: list[Any]) -> Any:
        try:
            return admin(addr, message, self.config.encrypt or None)
        except KeyRefused:
            return None

    async def remove_member(self, name: str) -> dict[str, Any]:
        """Remove another member (one that is gone for good) from the cluster."""
        member = next((m for m in self.store.members() if m["name"] == name), None)
        if member is None:
            raise NotFound(f"no member named {name}")
        if name == self.name:
            raise Conflict(f"name: {name} is this node; use leave instead")
        if member["server"] and not member["left"]:
            await self.replica.change_membership("remove", member["raft_addr"])
        result = await self.submit(
            {"op": "member_left", "name": name, "at": time.time()}
        )
        if "error" in result:
            raise NotFound(result["error"])
        logger.info("member %s removed from the cluster", name)
        member["left"] = True
        return self._member_view(member)

    def running_output(self, execution_id: str) -> str | None:
        return self.executor.output_so_far(execution_id)

    async def remote_output(self, execution: dict[str, Any]) -> str | None:
        """The output so far of a run going on another node, from that node."""
        member = next(
            (m for m in self.store.members() if m["name"] == execution["node_name"]),
            None,
        )
        if member is None or not member["http_addr"]:
            return None
        url = (
            f"http://{member['http_addr']}/jobs/{execution['job_name']}"
            f"/executions/{execution['id']}?local=true"
        )
        try:
            response = await AsyncHTTPClient().fetch(url, request_timeout=2.0)
            return str(json.loads(response.body)["output"])
        except Exception:
            return None


async def serve(config: Config) -> int:
    """Run a node until SIGINT or SIGTERM; return the process exit status."""
    # The loop thread hands runs to the spawner and the raft tick thread
    # applies commands; each system call of the loop releases the GIL, and
    # with Python's default 5 ms switch interval the loop then waits up to
    # 5 ms to get it back from a busy tick thread. A burst of 500 spawns took
    # seconds that way, when the loop still forked, and the node fell behind
    # at 500 runs/s (docs/benchmarks.md).
    sys.setswitchinterval(GIL_SWITCH_S)
    node = Node(config)
    try:
        await node.start()
    except JoinRefused as exc:
        logger.error("node %s cannot join: %s", node.name, exc)
        return EXIT_JOIN_FAILED
    await node.run_until_stopped()
    return 0
