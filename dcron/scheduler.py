"""The leader's scheduler: decides which job runs when, and commits that decision.

Only the leader schedules. It keeps a heap of (fire time, job) entries, one per
enabled job, plus the runs the store says are owed (retries after backoff,
dependents of a parent that succeeded). One IOLoop timer is armed for the
earliest entry; nothing polls the job table.

A run exists only once its ``fire`` command is committed (shared/DESIGN.md,
invariant 4). The scheduler commits the fire ``FIRE_LEAD_S`` before the slot,
so the target nodes hold a committed decision when the slot arrives and start
the process on time instead of one commit late. Runs due in the same instant
go out as one batch command: one commit for a burst, not one per job. The
fire names the target nodes, so every node agrees on where a run goes.

Everything the scheduler needs is in the store (the newest slot fired per job,
owed runs), so a new leader continues where the old one stopped (invariant 7).
Slots that fell due while no leader could fire them are handled by each job's
``catchup`` policy when a node becomes leader (docs/scheduling.md): ``latest``
runs the newest missed slot, ``all`` runs every missed slot within
``catchup_window`` oldest first, ``skip`` runs none; every missed slot that
does not run is recorded as ``lost`` with the reason.
"""

from __future__ import annotations

import heapq
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from tornado.ioloop import IOLoop

from dcron import jobs, schedule
from dcron.errors import DcronError, InvalidInput
from dcron.store import Store

logger = logging.getLogger(__name__)

FIRE_LEAD_S = 0.5
# Missed slots recorded one by one per job and catch-up; no schedule fires more
# than once a second, so the newest ones lie within this many seconds.
LOST_RECORD_LIMIT = 1000
# Commands per batch: a burst of 10,000 runs commits in a few batches, and no
# single raft entry grows past a few hundred kilobytes.
BATCH_LIMIT = 500
RESTART_AFTER_FAILURE_S = 1.0
# A slot this many seconds past due when its turn comes is settled like a slot
# missed while no leader ran, by the job's catch-up policy. A scheduler that
# falls this far behind (a node past its capacity, a loop blocked for seconds)
# otherwise fires every slot it owes one by one and falls further behind.
BEHIND_S = 5.0

Submit = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# (job, node to avoid if possible) -> the nodes a run goes to; [] when none match
Place = Callable[[dict[str, Any], str], list[str]]


def new_execution_id(at: float) -> str:
    """An id that sorts by time: milliseconds since the epoch, then randomness."""
    return f"{int(at * 1000):013x}{secrets.token_hex(5)}"


def fire_command(
    job: dict[str, Any],
    slot: float,
    trigger: str,
    nodes: list[str],
    keep: int,
    attempt: int = 1,
    pending_id: str | None = None,
    force: bool = False,
    start_at: float | None = None,
    group: str | None = None,
) -> dict[str, Any]:
    """The ``fire`` command that creates one run of ``job`` for ``slot``.

    The run has one execution per node in ``nodes``; with no node, it is
    recorded as failed with the reason. The processes start at ``start_at``,
    which is the slot itself unless the run is owed later than its slot (a
    retry waits out its backoff; a caught-up slot runs now).
    """
    now = time.time()
    stamp = max(now, slot)
    targets: list[str | None] = list(nodes) or [None]
    command: dict[str, Any] = {
        "op": "fire",
        "job": job["name"],
        "scheduled_at": slot,
        "start_at": slot if start_at is None else start_at,
        "trigger": trigger,
        "targets": [
            {"node": node, "execution_id": new_execution_id(stamp)} for node in targets
        ],
        "attempt": attempt,
        "at": now,
        "keep": keep,
    }
    if not nodes:
        command["no_target"] = (
            f"failed: no live node matches the job's tags {job['tags']}"
        )
    if pending_id is not None:
        command["pending_id"] = pending_id
    if group is not None:
        command["group"] = group
    if force:
        command["force"] = True
    return command


def missed_slots(
    parsed: schedule.Schedule, since: float, until: float, limit: int | None
) -> tuple[list[float], bool]:
    """Slots after ``since`` and at or before ``until``, oldest first.

    With a ``limit``, only the newest ``limit`` slots are returned and the flag
    says whether older ones were left out.
    """
    begin = since
    truncated = False
    if limit is not None and until - since > limit:
        # No schedule fires more than once a second: the newest `limit` slots
        # all lie in the last `limit` seconds.
        begin = until - limit
        first = parsed.next_after(datetime.fromtimestamp(since, UTC))
        truncated = first is not None and first.timestamp() <= begin
    found: list[float] = []
    cursor = parsed.next_after(datetime.fromtimestamp(begin, UTC))
    while cursor is not None and cursor.timestamp() <= until:
        found.append(cursor.timestamp())
        cursor = parsed.next_after(cursor)
    if limit is not None and len(found) > limit:
        truncated = True
        found = found[-limit:]
    return found, truncated


class Scheduler:
    """Fires due jobs while this node leads; idle otherwise."""

    def __init__(self, store: Store, submit: Submit, place: Place, keep: int) -> None:
        self.store = store
        self.submit = submit
        self.place = place
        self.keep = keep
        self.running = False
        self._heap: list[tuple[float, int, str, str]] = []
        self._generation: dict[str, int] = {}
        self._fired_upto: dict[str, float] = {}
        # The jobs as last read from the store, so a burst fires without a
        # query per job; job_changed keeps them current.
        self._jobs: dict[str, dict[str, Any]] = {}
        self._counter = 0
        self._timer: object | None = None
        self._timer_at = float("inf")
        self._restart: object | None = None
        self.fired = 0
        self.caught_up = 0
        self.recorded_lost = 0
        self.failed_submits = 0

    # ---- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Load every job and owed run from the store and start firing."""
        if self.running:
            return
        self.running = True
        now = time.time()
        catch_up: list[dict[str, Any]] = []
        for job in self.store.list_jobs():
            catch_up += self._load_job(job, now)
        self.reload_pending()
        if catch_up:
            logger.info("catching up: %d commands for missed slots", len(catch_up))
            IOLoop.current().add_callback(self._submit_batch, catch_up)
        self._arm()
        logger.info("scheduler started with %d jobs", len(self._generation))

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        self._cancel_timer()
        if self._restart is not None:
            IOLoop.current().remove_timeout(self._restart)
            self._restart = None
        self._heap.clear()
        self._generation.clear()
        self._fired_upto.clear()
        self._jobs.clear()
        logger.info("scheduler stopped")

    # ---- keeping the heap current -------------------------------------------

    def job_changed(self, name: str) -> None:
        """A job was created, replaced, toggled or deleted: re-plan it."""
        if not self.running:
            return
        job = self.store.get_job(name)
        self._generation[name] = self._generation.get(name, 0) + 1
        if job is None:
            self._generation.pop(name)
            self._jobs.pop(name, None)
            return
        self._jobs[name] = job
        self._plan(job, time.time())
        self._arm()

    def reload_pending(self) -> None:
        """Queue every run the store says is owed (retries, dependents)."""
        if not self.running:
            return
        queued = {
            tagged.partition("|")[2]
            for _, _, kind, tagged in self._heap
            if kind == "pending"
        }
        for row in self.store.pending():
            if row["id"] not in queued:
                self._push(row["due_at"], "pending", row["id"])
        self._arm()

    def _load_job(self, job: dict[str, Any], now: float) -> list[dict[str, Any]]:
        """Plan a job's next slot; return the commands that settle missed slots."""
        self._generation[job["name"]] = self._generation.get(job["name"], 0) + 1
        self._jobs[job["name"]] = job
        commands: list[dict[str, Any]] = []
        parsed = self._parse(job)
        since = job.get("last_scheduled_at") or job.get("updated_at")
        if parsed is not None and since is not None and not job["disabled"]:
            commands = self._catch_up(job, parsed, since, now)
        # Plan from now: every slot up to now is settled by the commands above.
        self._plan(job, now)
        return commands

    def _catch_up(
        self,
        job: dict[str, Any],
        parsed: schedule.Schedule,
        since: float,
        now: float,
        why: str = "no leader fired this slot",
    ) -> list[dict[str, Any]]:
        """Commands for the slots after ``since`` that were not fired in time."""
        mode = job.get("catchup") or "latest"
        window = jobs.window_seconds(job.get("catchup_window"))
        start = max(since, now - window)
        limit = None if mode == "all" else LOST_RECORD_LIMIT
        slots, truncated = missed_slots(parsed, start, now, limit)
        slots = [s for s in slots if self._allowed(job, s)]
        first = parsed.next_after(datetime.fromtimestamp(since, UTC))
        older = first is not None and first.timestamp() <= start
        if not slots:
            return []

        run = {"latest": slots[-1:], "all": slots, "skip": []}[mode]
        lost = [s for s in slots if s not in run]
        commands: list[dict[str, Any]] = []
        if lost:
            reason = f"lost: {why}; catchup is {mode}"
            if truncated or older:
                reason += (
                    "; older slots since "
                    f"{schedule.format_time(datetime.fromtimestamp(since, UTC))} "
                    "were not run and are not listed"
                )
            self.recorded_lost += len(lost)
            commands.append(
                {
                    "op": "miss",
                    "job": job["name"],
                    "slots": lost,
                    "reason": reason,
                    "id_prefix": new_execution_id(now),
                    "at": now,
                    "keep": self.keep,
                }
            )
        for slot in run:
            nodes = self.place(job, "")
            commands.append(
                fire_command(job, slot, "schedule", nodes, self.keep, start_at=now)
            )
        self.caught_up += len(run)
        return commands

    def _parse(self, job: dict[str, Any]) -> schedule.Schedule | None:
        if not job["schedule"]:
            return None
        try:
            return schedule.parse(job["schedule"], job["timezone"])
        except InvalidInput:
            logger.error(
                "job %s has an unreadable schedule %r", job["name"], job["schedule"]
            )
            return None

    def _plan(self, job: dict[str, Any], now: float) -> None:
        if job["disabled"]:
            return
        parsed = self._parse(job)
        if parsed is None:
            return
        # A fire this scheduler submitted may not be committed yet; planning
        # from the store alone would plan its slot again.
        after = max(now, self._fired_upto.get(job["name"], now))
        if job.get("last_scheduled_at") is not None:
            after = max(after, job["last_scheduled_at"])
        slot = parsed.next_after(datetime.fromtimestamp(after, UTC))
        if slot is None or not self._allowed(job, slot.timestamp()):
            return
        if slot.timestamp() <= after:
            # Planning the same slot again would spin the IOLoop for ever.
            logger.error("job %s schedule did not advance past %s", job["name"], slot)
            return
        self._push(slot.timestamp(), "job", job["name"])

    def _allowed(self, job: dict[str, Any], slot: float) -> bool:
        expires = job.get("expires_at")
        return not expires or slot <= schedule.parse_time(expires).timestamp()

    def _push(self, due: float, kind: str, key: str) -> None:
        self._counter += 1
        generation = self._generation.get(key, 0) if kind == "job" else 0
        heapq.heappush(self._heap, (due, self._counter, kind, f"{generation}|{key}"))

    # ---- the timer ---------------------------------------------------------

    def _arm(self) -> None:
        if not self.running or not self._heap:
            return
        due = self._heap[0][0] - FIRE_LEAD_S
        if due >= self._timer_at:
            return
        self._cancel_timer()
        loop = IOLoop.current()
        self._timer_at = due
        self._timer = loop.call_later(max(0.0, due - time.time()), self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            IOLoop.current().remove_timeout(self._timer)
        self._timer = None
        self._timer_at = float("inf")

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        if not self.running:
            return

        # Take what is due within the lead time: one commit for the burst. A
        # pass takes at most one batch; the rest of a larger burst follows in
        # the next loop turn, so requests and outcomes are served in between.
        now = time.time()
        commands: list[dict[str, Any]] = []
        lagging: list[tuple[float, str]] = []
        while (
            self._heap
            and self._heap[0][0] - FIRE_LEAD_S <= now
            and len(commands) < BATCH_LIMIT
        ):
            due, _, kind, tagged = heapq.heappop(self._heap)
            generation, _, key = tagged.partition("|")
            if kind == "job":
                commands += self._fire_job(key, int(generation), due, now, lagging)
            else:
                command = self._fire_pending(key)
                if command is not None:
                    commands.append(command)
        if lagging:
            self._warn_behind(lagging)
        if commands:
            IOLoop.current().add_callback(self._submit_batch, commands)
        self._arm()

    @staticmethod
    def _warn_behind(lagging: list[tuple[float, str]]) -> None:
        # One line a pass: a node past its capacity falls behind on hundreds
        # of jobs at once, and a line for each would bury the log.
        lag = max(lag for lag, _ in lagging)
        names = ", ".join(name for _, name in lagging[:10])
        more = f" and {len(lagging) - 10} more" if len(lagging) > 10 else ""
        logger.warning(
            "scheduler up to %.1fs behind job%s %s%s: their slots since then "
            "settled by each job's catchup",
            lag,
            "s" if len(lagging) > 1 else "",
            names,
            more,
        )

    def _fire_job(
        self,
        name: str,
        generation: int,
        slot: float,
        now: float,
        lagging: list[tuple[float, str]],
    ) -> list[dict[str, Any]]:
        if self._generation.get(name) != generation:
            return []  # the job changed since this entry was planned
        job = self._jobs.get(name)
        if job is None or job["disabled"]:
            return []
        if slot < now - BEHIND_S:
            lagging.append((now - slot, name))
            return self._fire_behind(job, slot, now)
        command = fire_command(job, slot, "schedule", self.place(job, ""), self.keep)
        self._fired_upto[name] = slot
        job["last_scheduled_at"] = slot
        self._plan(job, slot)
        return [command]

    def _fire_behind(
        self, job: dict[str, Any], slot: float, now: float
    ) -> list[dict[str, Any]]:
        """Settle the slots from ``slot`` to now by the job's catch-up policy."""
        parsed = self._parse(job)
        if parsed is None:
            return []
        since = job.get("last_scheduled_at")
        if since is None or since >= slot:
            since = slot - 0.001
        behind = f"the scheduler was {now - slot:.1f}s behind this slot"
        # The lost records name the slots; _warn_behind logs the pass.
        commands = self._catch_up(job, parsed, since, now, behind)
        self._fired_upto[job["name"]] = now
        job["last_scheduled_at"] = now
        self._plan(job, now)
        return commands

    def _fire_pending(self, pending_id: str) -> dict | None:
        row = self.store.get_pending(pending_id)
        if row is None:
            return None
        job = self.store.get_job(row["job_name"])
        if job is None:
            return None
        return fire_command(
            job,
            row["scheduled_at"],
            row["trigger"],
            self.place(job, row["avoid_node"]),
            self.keep,
            attempt=row["attempt"],
            pending_id=pending_id,
            start_at=row["due_at"],
            group=row["group"] or None,
        )

    async def _submit_batch(self, commands: list[dict[str, Any]]) -> None:
        for first in range(0, len(commands), BATCH_LIMIT):
            chunk = commands[first : first + BATCH_LIMIT]
            command = {"op": "batch", "commands": chunk} if len(chunk) > 1 else chunk[0]
            try:
                await self.submit(command)
            except DcronError as exc:
                self.failed_submits += len(chunk)
                logger.warning("could not commit %d commands: %s", len(chunk), exc)
                self._restart_soon()
                return
            self.fired += sum(1 for c in chunk if c["op"] == "fire")

    def _restart_soon(self) -> None:
        """Re-derive the plan from the store after a failed commit.

        Whether the failed commands were committed is unknown; the store knows.
        Restarting re-reads it, so a slot that did commit is not fired again
        and one that did not is settled by the catch-up policy.
        """
        if not self.running or self._restart is not None:
            return

        def restart() -> None:
            self._restart = None
            if self.running:
                self.stop()
                self.start()

        self._restart = IOLoop.current().call_later(RESTART_AFTER_FAILURE_S, restart)
