"""The leader's scheduler: decides which job runs when, and commits that decision.

Only the leader schedules. It keeps a heap of (fire time, job) entries, one per
enabled job, plus the runs the store says are owed (retries after backoff,
dependents of a parent that succeeded). One IOLoop timer is armed for the
earliest entry; nothing polls the job table.

A run exists only once its ``fire`` command is committed (shared/DESIGN.md,
invariant 4). The scheduler commits the fire ``FIRE_LEAD_S`` before the slot,
so the target node holds a committed decision when the slot arrives and starts
the process on time instead of one commit late. Runs due in the same instant
go out as one batch command: one commit for a burst, not one per job.

Everything the scheduler needs is in the store (the newest slot fired per job,
pending runs), so a new leader continues where the old one stopped
(invariant 7). Catch-up when becoming leader: for each job, the most recent
slot missed within ``CATCHUP_WINDOW_S`` runs once; older missed slots are
recorded nowhere and do not run (the ``latest`` rule of docs/scheduling.md).
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

from dcron import schedule
from dcron.errors import DcronError, InvalidInput
from dcron.store import Store

logger = logging.getLogger(__name__)

FIRE_LEAD_S = 0.5
CATCHUP_WINDOW_S = 24 * 3600.0
# Bound on the schedule steps taken to find the latest missed slot; a denser
# schedule is searched over its last minute only.
CATCHUP_MAX_STEPS = 2000

Submit = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
ChooseNode = Callable[[dict[str, Any]], str | None]


def new_execution_id(at: float) -> str:
    """An id that sorts by time: milliseconds since the epoch, then randomness."""
    return f"{int(at * 1000):013x}{secrets.token_hex(5)}"


def fire_command(
    job: dict[str, Any],
    slot: float,
    trigger: str,
    node: str | None,
    keep: int,
    attempt: int = 1,
    pending_id: str | None = None,
    force: bool = False,
    start_at: float | None = None,
) -> dict[str, Any]:
    """The ``fire`` command that creates one run of ``job`` for ``slot``.

    The process starts at ``start_at``, which is the slot itself unless the run
    is owed later than its slot (a retry waits out its backoff).
    """
    now = time.time()
    command: dict[str, Any] = {
        "op": "fire",
        "job": job["name"],
        "scheduled_at": slot,
        "start_at": slot if start_at is None else start_at,
        "trigger": trigger,
        "execution_id": new_execution_id(max(now, slot)),
        "node": node,
        "attempt": attempt,
        "at": now,
        "keep": keep,
    }
    if pending_id is not None:
        command["pending_id"] = pending_id
    if force:
        command["force"] = True
    return command


def latest_missed(
    parsed: schedule.Schedule, since: float, now: float
) -> datetime | None:
    """The newest slot after ``since`` and at or before ``now``, if any."""
    start = max(since, now - CATCHUP_WINDOW_S)
    for window_start in (start, max(since, now - 60.0)):
        found = None
        cursor = parsed.next_after(datetime.fromtimestamp(window_start, UTC))
        for _ in range(CATCHUP_MAX_STEPS):
            if cursor is None or cursor.timestamp() > now:
                return found
            found = cursor
            cursor = parsed.next_after(cursor)
    return None


class Scheduler:
    """Fires due jobs while this node leads; idle otherwise."""

    def __init__(
        self, store: Store, submit: Submit, choose_node: ChooseNode, keep: int
    ) -> None:
        self.store = store
        self.submit = submit
        self.choose_node = choose_node
        self.keep = keep
        self.running = False
        self._heap: list[tuple[float, int, str, str]] = []
        self._generation: dict[str, int] = {}
        self._counter = 0
        self._timer: object | None = None
        self._timer_at = float("inf")
        self.fired = 0
        self.caught_up = 0
        self.failed_submits = 0

    # ---- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Load every job and owed run from the store and start firing."""
        if self.running:
            return
        self.running = True
        now = time.time()
        catch_up = []
        for job in self.store.list_jobs():
            missed = self._load_job(job, now)
            if missed is not None:
                catch_up.append(
                    fire_command(
                        job, missed, "schedule", self.choose_node(job), self.keep
                    )
                )
        self.reload_pending()
        if catch_up:
            self.caught_up += len(catch_up)
            logger.info("catching up %d missed slots", len(catch_up))
            IOLoop.current().add_callback(self._submit_batch, catch_up)
        self._arm()
        logger.info("scheduler started with %d jobs", len(self._generation))

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        self._cancel_timer()
        self._heap.clear()
        self._generation.clear()
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
            return
        self._plan(job, time.time())
        self._arm()

    def reload_pending(self) -> None:
        """Queue every run the store says is owed (retries, dependents)."""
        if not self.running:
            return
        queued = {key for _, _, kind, key in self._heap if kind == "pending"}
        for row in self.store.pending():
            if row["id"] not in queued:
                self._push(row["due_at"], "pending", row["id"])
        self._arm()

    def _load_job(self, job: dict[str, Any], now: float) -> float | None:
        """Plan a job's next slot; return the slot to catch up on, if any."""
        self._generation[job["name"]] = self._generation.get(job["name"], 0) + 1
        missed = None
        parsed = self._parse(job)
        since = job.get("last_scheduled_at") or job.get("updated_at")
        if parsed is not None and since is not None and not job["disabled"]:
            slot = latest_missed(parsed, since, now)
            if slot is not None and self._allowed(job, slot.timestamp()):
                missed = slot.timestamp()
        # Plan from now: every slot up to now was either fired, caught up
        # above, or is older than the one caught up.
        self._plan(job, now)
        return missed

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
        after = now
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

        # Take everything due within the lead time: one commit for the burst.
        now = time.time()
        commands = []
        while self._heap and self._heap[0][0] - FIRE_LEAD_S <= now:
            due, _, kind, tagged = heapq.heappop(self._heap)
            generation, _, key = tagged.partition("|")
            if kind == "job":
                command = self._fire_job(key, int(generation), due)
            else:
                command = self._fire_pending(key)
            if command is not None:
                commands.append(command)
        if commands:
            IOLoop.current().add_callback(self._submit_batch, commands)
        self._arm()

    def _fire_job(self, name: str, generation: int, slot: float) -> dict | None:
        if self._generation.get(name) != generation:
            return None  # the job changed since this entry was planned
        job = self.store.get_job(name)
        if job is None or job["disabled"]:
            return None
        command = fire_command(job, slot, "schedule", self.choose_node(job), self.keep)
        job["last_scheduled_at"] = slot
        self._plan(job, slot)
        return command

    def _fire_pending(self, pending_id: str) -> dict | None:
        row = next((p for p in self.store.pending() if p["id"] == pending_id), None)
        if row is None:
            return None
        job = self.store.get_job(row["job_name"])
        if job is None:
            return None
        return fire_command(
            job,
            row["scheduled_at"],
            row["trigger"],
            self.choose_node(job),
            self.keep,
            attempt=row["attempt"],
            pending_id=pending_id,
            start_at=row["due_at"],
        )

    async def _submit_batch(self, commands: list[dict[str, Any]]) -> None:
        command = (
            commands[0] if len(commands) == 1 else {"op": "batch", "commands": commands}
        )
        try:
            await self.submit(command)
        except DcronError as exc:
            # The slots stay unfired in the store; the next leader (or this
            # one, re-elected) catches the latest of them up.
            self.failed_submits += len(commands)
            logger.warning("could not commit %d runs: %s", len(commands), exc)
            return
        self.fired += len(commands)
