"""The SQLite store: peewee models, every SQL query, and the state machine.

Nothing else in dcron touches SQLite. Writes happen only in ``apply``, which
the replication layer calls on its tick thread with each committed command, in
log order, on every node. Readers (the HTTP API, the scheduler) use their own
connection: peewee keeps one per thread and SQLite runs in WAL mode, so reads
never wait for the writer.

``apply`` obeys two rules (shared/DESIGN.md, invariants 2 and 3):

* it reads nothing but the command and the store, so every node computes the
  same result; whoever submits a command puts its times and ids in it;
* it stores the raft index of the command in the same transaction as the
  command's effects and skips any index it has already seen, so replaying the
  journal after a restart changes nothing.

A command the store must refuse (a parent that vanished, a duplicate slot) is
not an exception: it returns ``{"error": ..., "status": ...}`` or an
``ignored`` outcome, because an exception would wedge the replication log.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

import peewee as pw

logger = logging.getLogger(__name__)

database = pw.SqliteDatabase(None)

# Commands and rows carry times as seconds since the epoch (UTC): they sort and
# compare as numbers, and the API renders them as RFC 3339.
Result = dict[str, Any]


class BaseModel(pw.Model):
    class Meta:
        database = database


class Meta(BaseModel):
    """Small named values; ``last_applied`` is the raft index of the last command."""

    key = pw.TextField(primary_key=True)
    value = pw.TextField()


class JobRow(BaseModel):
    name = pw.TextField(primary_key=True)
    body = pw.TextField()  # the client's fields, as jobs.validate returned them
    parent_job = pw.TextField(null=True, index=True)
    disabled = pw.BooleanField(default=False)
    status = pw.TextField(default="")
    success_count = pw.IntegerField(default=0)
    error_count = pw.IntegerField(default=0)
    skip_count = pw.IntegerField(default=0)
    lost_count = pw.IntegerField(default=0)
    last_success = pw.DoubleField(null=True)
    last_error = pw.DoubleField(null=True)
    # The newest slot fired by schedule: a fire for this slot or an older one
    # is a duplicate (invariant 4), whatever happened to its execution row.
    last_scheduled_at = pw.DoubleField(null=True)
    created_at = pw.DoubleField()
    updated_at = pw.DoubleField()

    class Meta:
        table_name = "job"


class ExecutionRow(BaseModel):
    id = pw.TextField(primary_key=True)
    # The first attempt's id, shared by the retries of the same slot.
    group = pw.TextField()
    job_name = pw.TextField()
    seq = pw.IntegerField()  # (raft index * 1000 + position in a batch) * 100 + target
    scheduled_at = pw.DoubleField()
    started_at = pw.DoubleField(null=True)
    finished_at = pw.DoubleField(null=True)
    status = pw.TextField()
    success = pw.BooleanField(null=True)
    exit_code = pw.IntegerField(null=True)
    output = pw.TextField(default="")
    output_truncated = pw.BooleanField(default=False)
    node_name = pw.TextField(default="")
    attempt = pw.IntegerField(default=1)
    trigger = pw.TextField()

    class Meta:
        table_name = "execution"
        indexes = ((("job_name", "seq"), False), (("status",), False))


# A new execution's columns that its fire does not set.
EXECUTION_DEFAULTS: dict[str, Any] = {
    "finished_at": None,
    "status": "running",
    "success": None,
    "exit_code": None,
    "output": "",
    "output_truncated": False,
}


class PendingRow(BaseModel):
    """A run the leader owes: a retry after backoff, or a dependent job."""

    id = pw.TextField(primary_key=True)
    job_name = pw.TextField()
    due_at = pw.DoubleField()
    trigger = pw.TextField()
    attempt = pw.IntegerField()
    scheduled_at = pw.DoubleField()
    origin = pw.TextField()  # the execution that caused it
    group = pw.TextField(default="")  # for a retry: the group it continues
    avoid_node = pw.TextField(default="")  # for a retry: where it failed

    class Meta:
        table_name = "pending"


class MemberRow(BaseModel):
    name = pw.TextField(primary_key=True)
    http_addr = pw.TextField()
    raft_addr = pw.TextField()
    tags = pw.TextField(default="{}")
    server = pw.BooleanField(default=True)
    left = pw.BooleanField(default=False)
    joined_at = pw.DoubleField()
    updated_at = pw.DoubleField()

    class Meta:
        table_name = "member"


MODELS = (Meta, JobRow, ExecutionRow, PendingRow, MemberRow)
PRAGMAS = {
    "journal_mode": "wal",
    # NORMAL in WAL mode survives a killed process; only power loss can drop
    # the newest transactions, and those are still in the raft log of peers.
    "synchronous": "normal",
    "busy_timeout": 5000,
    "foreign_keys": 0,
    "page_size": 4096,
}
PAGE_SIZE = 4096


class FatalStoreError(Exception):
    """The store cannot write (disk full, I/O error): the node must stop."""


class Store:
    """One node's SQLite database."""

    def __init__(self, path: str, max_bytes: int = 0) -> None:
        self.path = path
        pragmas = dict(PRAGMAS)
        if max_bytes:
            # SQLite answers "database or disk is full" past this size, the
            # same failure as a full disk, and the node stops on it.
            pragmas["max_page_count"] = max(1, max_bytes // PAGE_SIZE)
        database.init(path, pragmas=pragmas, check_same_thread=False)
        database.connect(reuse_if_open=True)
        database.create_tables(MODELS)
        self.last_applied = self._read_last_applied()
        self.on_applied: Callable[[dict[str, Any], Result], None] | None = None

    def close(self) -> None:
        if not database.is_closed():
            database.close()

    def _read_last_applied(self) -> int:
        row = Meta.get_or_none(Meta.key == "last_applied")
        return int(row.value) if row else 0

    # ---- the state machine -------------------------------------------------

    def apply(self, index: int, command: dict[str, Any]) -> Result:
        """Apply one committed command at raft ``index``; skip what was seen."""
        if index <= self.last_applied:
            return {"ignored": "replayed"}

        try:
            with database.atomic():
                result = self._dispatch(index * 1000, command)
                Meta.replace(key="last_applied", value=str(index)).execute()
        except pw.IntegrityError:
            # A constraint broken by the command itself is deterministic: every
            # node refuses it alike. Handled with the other bugs below.
            result = self._skip_broken(index, command)
        except (pw.OperationalError, pw.DatabaseError, OSError) as exc:
            raise FatalStoreError(f"cannot apply index {index}: {exc}") from exc
        except Exception:
            # A bug, not the environment: every node fails the same way on the
            # same command, so record it as applied and move on rather than
            # wedge the log (shared/PYSYNCOBJ.md, trap 2).
            result = self._skip_broken(index, command)

        self.last_applied = index
        if self.on_applied is not None:
            self.on_applied(command, result)
        return result

    def _skip_broken(self, index: int, command: dict[str, Any]) -> Result:
        logger.exception("command at index %d failed: %s", index, command.get("op"))
        with database.atomic():
            Meta.replace(key="last_applied", value=str(index)).execute()
        return {"error": "internal error applying command", "status": 500}

    def _dispatch(self, seq: int, command: dict[str, Any]) -> Result:
        """Run one command; ``seq`` orders the rows it creates across the log."""
        op = command.get("op")
        if op == "batch":
            return {
                "results": [
                    self._dispatch(seq + i, sub)
                    for i, sub in enumerate(command["commands"])
                ]
            }
        handler = getattr(self, "_apply_" + str(op), None)
        if handler is None:
            return {"error": f"unknown command {op!r}", "status": 500}
        return handler(seq, command)

    def _apply_put_job(self, seq: int, command: dict[str, Any]) -> Result:
        job = command["job"]
        name = job["name"]
        parent = job.get("parent_job")
        if parent:
            if JobRow.get_or_none(JobRow.name == parent) is None:
                return {"error": "parent_job: no job named " + parent, "status": 400}
            if self._would_cycle(name, parent):
                return {"error": "parent_job: would form a cycle", "status": 400}

        at = command["at"]
        existing = JobRow.get_or_none(JobRow.name == name)
        fields = {
            "body": json.dumps(job, sort_keys=True),
            "parent_job": parent,
            "disabled": job["disabled"],
            "updated_at": at,
        }
        if existing is None:
            JobRow.create(name=name, created_at=at, **fields)
        else:
            JobRow.update(**fields).where(JobRow.name == name).execute()
        return {"job": self.get_job(name), "created": existing is None}

    def _would_cycle(self, name: str, parent: str) -> bool:
        seen = set()
        current: str | None = parent
        while current is not None and current not in seen:
            if current == name:
                return True
            seen.add(current)
            row = JobRow.get_or_none(JobRow.name == current)
            current = row.parent_job if row else None
        return False

    def _apply_delete_job(self, seq: int, command: dict[str, Any]) -> Result:
        name = command["name"]
        job = self.get_job(name)
        if job is None:
            return {"error": f"job {name} not found", "status": 404}
        if job["dependent_jobs"]:
            children = ", ".join(job["dependent_jobs"])
            return {
                "error": f"name: job {name} has dependents: {children}",
                "status": 409,
            }
        self._delete_job(name)
        return {"job": job}

    def _delete_job(self, name: str) -> None:
        ExecutionRow.delete().where(ExecutionRow.job_name == name).execute()
        PendingRow.delete().where(PendingRow.job_name == name).execute()
        JobRow.delete().where(JobRow.name == name).execute()

    def _apply_toggle_job(self, seq: int, command: dict[str, Any]) -> Result:
        name = command["name"]
        row = JobRow.get_or_none(JobRow.name == name)
        if row is None:
            return {"error": f"job {name} not found", "status": 404}
        body = json.loads(row.body)
        body["disabled"] = not body["disabled"]
        JobRow.update(
            body=json.dumps(body, sort_keys=True),
            disabled=body["disabled"],
            updated_at=command["at"],
        ).where(JobRow.name == name).execute()
        return {"job": self.get_job(name)}

    def _apply_fire(self, seq: int, command: dict[str, Any]) -> Result:
        """Create the executions of one run of a job, or record why there are none.

        A run has one execution per target node, all for the same slot. A
        ``fire`` for a slot already fired (invariant 4), for an owed run already
        fired, or for an execution id already stored changes nothing, so a
        command submitted twice runs once.
        """
        name = command["job"]
        row = JobRow.get_or_none(JobRow.name == name)
        if row is None:
            return {"ignored": "job deleted"}
        body = json.loads(row.body)
        slot = command["scheduled_at"]
        targets = command["targets"]
        ids = [target["execution_id"] for target in targets]
        if ExecutionRow.select().where(ExecutionRow.id.in_(ids)).exists():
            return {"ignored": "execution already fired"}

        job_updates: dict[Any, Any] = {}
        if command["trigger"] == "schedule":
            if body["disabled"]:
                return {"ignored": "job disabled"}
            if row.last_scheduled_at is not None and slot <= row.last_scheduled_at:
                return {"ignored": "slot already fired"}
            job_updates[JobRow.last_scheduled_at] = slot
        pending_id = command.get("pending_id")
        if pending_id is not None:
            if PendingRow.delete().where(PendingRow.id == pending_id).execute() == 0:
                return {"ignored": "pending run already fired"}

        def base(target: dict[str, Any], offset: int) -> dict[str, Any]:
            return {
                "id": target["execution_id"],
                "group": command.get("group") or target["execution_id"],
                "job_name": name,
                "seq": seq * 100 + offset,
                "scheduled_at": slot,
                "node_name": target["node"] or "",
                "attempt": command.get("attempt", 1),
                "trigger": command["trigger"],
            }

        if job_updates:
            JobRow.update(job_updates).where(JobRow.name == name).execute()
        if targets[0]["node"] is None:
            return self._close_at_once(
                base(targets[0], 0), command, "failed", command["no_target"]
            )
        # Only forbid and replace care about runs still open; allow, the
        # common case, skips the query.
        policy = body["concurrency"]
        open_runs = []
        if policy != "allow":
            open_runs = list(
                ExecutionRow.select(ExecutionRow.id, ExecutionRow.node_name).where(
                    (ExecutionRow.job_name == name) & (ExecutionRow.status == "running")
                )
            )
        if open_runs and policy == "forbid" and not command.get("force"):
            reason = (
                f"skipped: execution {open_runs[0].id} is still running and the "
                "job forbids concurrent runs"
            )
            return self._close_at_once(base(targets[0], 0), command, "skipped", reason)

        start_at = command.get("start_at", slot)
        rows = [
            {**EXECUTION_DEFAULTS, **base(target, offset), "started_at": start_at}
            for offset, target in enumerate(targets)
        ]
        ExecutionRow.insert_many(rows).execute()
        if row.status != "running":
            JobRow.update(status="running").where(JobRow.name == name).execute()
        self._prune(name, command["keep"])
        replaced = []
        if open_runs and policy == "replace":
            replaced = [{"id": r.id, "node_name": r.node_name} for r in open_runs]
        return {"executions": rows, "job": body, "replaced": replaced}

    def _close_at_once(
        self, base: dict[str, Any], command: dict[str, Any], status: str, reason: str
    ) -> Result:
        """Record a run that never started: skipped by policy, or no node for it."""
        ExecutionRow.create(
            **base,
            status=status,
            success=False,
            finished_at=command["at"],
            output=reason,
        )
        counter = JobRow.skip_count if status == "skipped" else JobRow.error_count
        updates: dict[Any, Any] = {counter: counter + 1}
        if status == "failed":
            updates[JobRow.last_error] = command["at"]
            updates[JobRow.status] = "failed"
        JobRow.update(updates).where(JobRow.name == base["job_name"]).execute()
        self._prune(base["job_name"], command["keep"])
        return {status: reason, "executions": [], "closed": base["id"]}

    def _apply_miss(self, seq: int, command: dict[str, Any]) -> Result:
        """Record slots no leader fired, and that the catch-up policy will not run."""
        name = command["job"]
        row = JobRow.get_or_none(JobRow.name == name)
        if row is None:
            return {"ignored": "job deleted"}
        last = row.last_scheduled_at
        slots = [s for s in command["slots"] if last is None or s > last]
        for offset, slot in enumerate(slots):
            execution_id = f"{command['id_prefix']}{offset:04d}"
            ExecutionRow.create(
                id=execution_id,
                group=execution_id,
                job_name=name,
                seq=seq * 100 + min(offset, 99),
                scheduled_at=slot,
                node_name="",
                trigger="schedule",
                status="lost",
                success=False,
                finished_at=command["at"],
                output=command["reason"],
            )
        if slots:
            JobRow.update(
                lost_count=JobRow.lost_count + len(slots),
                last_scheduled_at=max(slots),
            ).where(JobRow.name == name).execute()
            self._prune(name, command["keep"])
        return {"recorded": len(slots)}

    def _prune(self, name: str, keep: int) -> None:
        """Keep the newest ``keep`` finished executions of a job."""
        stale = (
            ExecutionRow.select(ExecutionRow.id)
            .where((ExecutionRow.job_name == name) & (ExecutionRow.status != "running"))
            .order_by(ExecutionRow.seq.desc())
            .limit(-1)
            .offset(keep)
        )
        ExecutionRow.delete().where(ExecutionRow.id.in_(stale)).execute()

    def _apply_finish(self, seq: int, command: dict[str, Any]) -> Result:
        """Close a running execution with its outcome and update the job."""
        run = ExecutionRow.get_or_none(ExecutionRow.id == command["execution_id"])
        if run is None:
            return {"ignored": "execution not found"}
        if run.status != "running":
            return {"ignored": "execution already closed"}
        status = command.get("status") or (
            "success" if command["success"] else "failed"
        )
        run.status = status
        run.success = bool(command["success"])
        run.exit_code = command.get("exit_code")
        run.started_at = command.get("started_at") or run.started_at
        run.finished_at = command["finished_at"]
        run.output = command.get("output", "")
        run.output_truncated = bool(command.get("output_truncated"))
        run.save()
        if self._record_outcome(run, command):
            return {"deleted_job": run.job_name}
        if "keep" in command:
            self._prune(run.job_name, command["keep"])
        return {"execution": run.__data__}

    def _record_outcome(self, run: ExecutionRow, command: dict[str, Any]) -> bool:
        """Update the job after a run closed; True if that deleted the job."""
        row = JobRow.get_or_none(JobRow.name == run.job_name)
        if row is None:
            return False
        body = json.loads(row.body)
        still_open = (
            ExecutionRow.select()
            .where(
                (ExecutionRow.job_name == run.job_name)
                & (ExecutionRow.status == "running")
            )
            .exists()
        )
        if run.success:
            row.success_count += 1
            row.last_success = run.finished_at
        else:
            row.error_count += 1
            row.last_error = run.finished_at
        row.status = (
            "running" if still_open else ("success" if run.success else "failed")
        )
        row.save()

        if not run.success and run.attempt <= body["retries"]:
            delay = command.get("retry_backoff", 1.0) * 2 ** (run.attempt - 1)
            PendingRow.replace(
                id=f"{run.id}/retry",
                job_name=run.job_name,
                due_at=run.finished_at + delay,
                trigger="retry",
                attempt=run.attempt + 1,
                scheduled_at=run.scheduled_at,
                origin=run.id,
                group=run.group,
                avoid_node=run.node_name,
            ).execute()
        if run.success:
            for child in JobRow.select().where(JobRow.parent_job == run.job_name):
                PendingRow.replace(
                    id=f"{run.id}/parent/{child.name}",
                    job_name=child.name,
                    due_at=run.finished_at,
                    trigger="parent",
                    attempt=1,
                    scheduled_at=run.finished_at,
                    origin=run.id,
                ).execute()
            if body["ephemeral"] and not self.dependents(run.job_name):
                self._delete_job(run.job_name)
                return True
        return False

    def _apply_interrupt(self, seq: int, command: dict[str, Any]) -> Result:
        """Close open executions whose process is gone.

        ``status`` says why: ``interrupted`` when their node restarted, ``lost``
        when their node stopped answering.
        """
        status = command.get("status", "interrupted")
        closed = []
        for execution_id in command["execution_ids"]:
            run = ExecutionRow.get_or_none(ExecutionRow.id == execution_id)
            if run is None or run.status != "running":
                continue
            run.status = status
            run.success = False
            run.finished_at = command["at"]
            run.output = (run.output or "") + command["reason"]
            run.save()
            if status == "lost":
                JobRow.update(lost_count=JobRow.lost_count + 1).where(
                    JobRow.name == run.job_name
                ).execute()
            self._record_outcome(run, command)
            closed.append({"id": execution_id, "job_name": run.job_name})
        return {"closed": closed}

    def _apply_clear_executions(self, seq: int, command: dict[str, Any]) -> Result:
        name = command["name"]
        if JobRow.get_or_none(JobRow.name == name) is None:
            return {"error": f"job {name} not found", "status": 404}
        # A run still going keeps its row, so that its finish has a place to land.
        ExecutionRow.delete().where(
            (ExecutionRow.job_name == name) & (ExecutionRow.status != "running")
        ).execute()
        running = (
            ExecutionRow.select()
            .where((ExecutionRow.job_name == name) & (ExecutionRow.status == "running"))
            .exists()
        )
        JobRow.update(
            success_count=0,
            error_count=0,
            skip_count=0,
            lost_count=0,
            last_success=None,
            last_error=None,
            status="running" if running else "",
        ).where(JobRow.name == name).execute()
        return {"job": self.get_job(name)}

    def _apply_member_up(self, seq: int, command: dict[str, Any]) -> Result:
        member = command["member"]
        existing = MemberRow.get_or_none(MemberRow.name == member["name"])
        MemberRow.replace(
            name=member["name"],
            http_addr=member["http_addr"],
            raft_addr=member["raft_addr"],
            tags=json.dumps(member["tags"], sort_keys=True),
            server=member["server"],
            left=False,
            joined_at=existing.joined_at if existing else command["at"],
            updated_at=command["at"],
        ).execute()
        return {"member": member["name"]}

    def _apply_member_left(self, seq: int, command: dict[str, Any]) -> Result:
        """A server left the cluster, or was removed from it."""
        updated = (
            MemberRow.update(left=True, updated_at=command["at"])
            .where(MemberRow.name == command["name"])
            .execute()
        )
        if not updated:
            return {"error": f"no member named {command['name']}", "status": 404}
        return {"member": command["name"]}

    # ---- reads -------------------------------------------------------------

    def _job_dict(self, row: JobRow, dependents: Iterable[str]) -> dict[str, Any]:
        job = json.loads(row.body)
        job.update(
            dependent_jobs=sorted(dependents),
            status=row.status,
            success_count=row.success_count,
            error_count=row.error_count,
            skip_count=row.skip_count,
            lost_count=row.lost_count,
            last_success=row.last_success,
            last_error=row.last_error,
            last_scheduled_at=row.last_scheduled_at,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )
        return job

    def dependents(self, name: str) -> list[str]:
        query = JobRow.select(JobRow.name).where(JobRow.parent_job == name)
        return [row.name for row in query]

    def get_job(self, name: str) -> dict[str, Any] | None:
        row = JobRow.get_or_none(JobRow.name == name)
        if row is None:
            return None
        return self._job_dict(row, self.dependents(name))

    def list_jobs(self) -> list[dict[str, Any]]:
        children: dict[str, list[str]] = {}
        query = JobRow.select(JobRow.name, JobRow.parent_job).where(
            JobRow.parent_job.is_null(False)
        )
        for row in query:
            children.setdefault(str(row.parent_job), []).append(row.name)
        return [
            self._job_dict(row, children.get(row.name, ()))
            for row in JobRow.select().order_by(JobRow.name)
        ]

    def job_count(self) -> int:
        return JobRow.select().count()

    def executions(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        query = (
            ExecutionRow.select()
            .where(ExecutionRow.job_name == name)
            .order_by(ExecutionRow.seq.desc())
        )
        if limit is not None:
            query = query.limit(limit)
        return _dicts(query)

    def get_execution(self, name: str, execution_id: str) -> dict[str, Any] | None:
        return (
            ExecutionRow.select()
            .where((ExecutionRow.job_name == name) & (ExecutionRow.id == execution_id))
            .dicts()
            .first()
        )

    def open_executions(self, node_name: str | None = None) -> list[dict[str, Any]]:
        query = ExecutionRow.select().where(ExecutionRow.status == "running")
        if node_name is not None:
            query = query.where(ExecutionRow.node_name == node_name)
        return _dicts(query)

    def get_pending(self, pending_id: str) -> dict[str, Any] | None:
        return PendingRow.select().where(PendingRow.id == pending_id).dicts().first()

    def pending(self) -> list[dict[str, Any]]:
        return _dicts(PendingRow.select().order_by(PendingRow.due_at))

    def members(self) -> list[dict[str, Any]]:
        out = _dicts(MemberRow.select().order_by(MemberRow.name))
        for row in out:
            row["tags"] = json.loads(row["tags"])
        return out

    # ---- snapshots ---------------------------------------------------------

    def snapshot_to(self, path: str, raft_meta: bytes) -> None:
        """Write a consistent copy of the database, with raft's own state in it."""
        target = sqlite3.connect(path)
        try:
            database.connection().backup(target)
            target.execute("create table if not exists raft_meta (data blob)")
            target.execute("delete from raft_meta")
            target.execute("insert into raft_meta values (?)", (raft_meta,))
            target.commit()
        finally:
            target.close()

    def restore_from(self, path: str) -> bytes:
        """Load a snapshot unless the live database is already past it.

        Returns raft's state stored in the snapshot. After a restart the live
        database is normally newer than the last snapshot; copying the
        snapshot over it would only make the journal replay redo work.
        """
        source = sqlite3.connect(path)
        try:
            (raft_meta,) = source.execute("select data from raft_meta").fetchone()
            row = source.execute(
                "select value from meta where key = 'last_applied'"
            ).fetchone()
            snapshot_index = int(row[0]) if row else 0
            if snapshot_index > self.last_applied:
                source.backup(database.connection())
                database.execute_sql("drop table if exists raft_meta")
                self.last_applied = self._read_last_applied()
                logger.info("store restored from snapshot at index %d", snapshot_index)
        finally:
            source.close()
        return bytes(raft_meta)

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.path.getsize(self.path + suffix)
            except OSError:
                pass
        return total


def _dicts(query: Any) -> list[dict[str, Any]]:
    """The rows of a select as plain dicts."""
    return [dict(row) for row in query.dicts()]


# ---- backup files ------------------------------------------------------------


def copy_database(source_path: str, target_path: str) -> None:
    """Copy a live store into a new self-contained file with SQLite's backup API.

    The copy is one read transaction, so it is consistent while the apply
    thread keeps writing (WAL mode: the reader sees one committed state).
    Raises ValueError when SQLite cannot make the copy.
    """
    try:
        source = sqlite3.connect(source_path)
        target = sqlite3.connect(target_path)
        try:
            source.backup(target)
            target.execute("pragma journal_mode = delete")
        finally:
            target.close()
            source.close()
    except sqlite3.Error as exc:
        raise ValueError(str(exc)) from exc


def read_backup_jobs(path: str) -> list[tuple[str, str, float]]:
    """(name, body, updated_at) of every job in a backup file, by name.

    Raises ValueError when the file is not a readable dcron store.
    """
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return list(
                connection.execute(
                    "select name, body, updated_at from job order by name"
                ).fetchall()
            )
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise ValueError(str(exc)) from exc
