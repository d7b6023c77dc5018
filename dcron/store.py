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
        indexes = (
            (("job_name", "seq"), False),
            (("status",), False),
            # Whether a job still has runs open, asked at every outcome.
            (("job_name", "status"), False),
        )


EXECUTION_COLUMNS = tuple(ExecutionRow._meta.sorted_field_names)
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
                self._set_last_applied(index)
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
            self._set_last_applied(index)
        return {"error": "internal error applying command", "status": 500}

    @staticmethod
    def _sql(sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        """Run one fixed statement on this thread's connection.

        The commands applied for every run (fire, finish) use fixed SQL
        rather than peewee's query builder: building the SQL text cost more
        than SQLite executing it, on the thread that also sends raft's
        heartbeats (docs/benchmarks.md).
        """
        return database.connection().execute(sql, tuple(params))

    def _set_last_applied(self, index: int) -> None:
        self._sql(
            "insert or replace into meta (key, value) values ('last_applied', ?)",
            (str(index),),
        )

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
            if self._parent_of(parent) is None:
                return {"error": "parent_job: no job named " + parent, "status": 400}
            if self._would_cycle(name, parent):
                return {"error": "parent_job: would form a cycle", "status": 400}

        at = command["at"]
        body = json.dumps(job, sort_keys=True)
        updated = self._sql(
            "update job set body = ?, parent_job = ?, disabled = ?, updated_at = ?"
            " where name = ?",
            (body, parent, job["disabled"], at, name),
        ).rowcount
        if not updated:
            self._sql(
                "insert into job (name, body, parent_job, disabled, status,"
                " success_count, error_count, skip_count, lost_count, created_at,"
                " updated_at) values (?, ?, ?, ?, '', 0, 0, 0, 0, ?, ?)",
                (name, body, parent, job["disabled"], at, at),
            )
        return {"job": self.get_job(name), "created": not updated}

    def _parent_of(self, name: str) -> tuple[str | None] | None:
        """(parent_job,) of the job ``name``; None when there is no such job."""
        row = self._sql("select parent_job from job where name = ?", (name,))
        return row.fetchone()  # type: ignore[no-any-return]

    def _would_cycle(self, name: str, parent: str) -> bool:
        seen = set()
        current: str | None = parent
        while current is not None and current not in seen:
            if current == name:
                return True
            seen.add(current)
            row = self._parent_of(current)
            current = row[0] if row else None
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
        row = self._sql(
            "select body, last_scheduled_at, status from job where name = ?", (name,)
        ).fetchone()
        if row is None:
            return {"ignored": "job deleted"}
        body_text, last_slot, job_status = row
        body = json.loads(body_text)
        slot = command["scheduled_at"]
        targets = command["targets"]
        ids = [target["execution_id"] for target in targets]
        marks = ", ".join("?" * len(ids))
        if self._sql(
            f"select 1 from execution where id in ({marks}) limit 1", ids
        ).fetchone():
            return {"ignored": "execution already fired"}

        if command["trigger"] == "schedule":
            if body["disabled"]:
                return {"ignored": "job disabled"}
            if last_slot is not None and slot <= last_slot:
                return {"ignored": "slot already fired"}
        pending_id = command.get("pending_id")
        if pending_id is not None:
            taken = self._sql("delete from pending where id = ?", (pending_id,))
            if taken.rowcount == 0:
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

        if command["trigger"] == "schedule":
            self._sql(
                "update job set last_scheduled_at = ? where name = ?", (slot, name)
            )
        if targets[0]["node"] is None:
            return self._close_at_once(
                base(targets[0], 0), command, "failed", command["no_target"]
            )
        # Only forbid and replace care about runs still open; allow, the
        # common case, skips the query.
        policy = body["concurrency"]
        open_runs: list[tuple[str, str]] = []
        if policy != "allow":
            open_runs = self._sql(
                "select id, node_name from execution"
                " where job_name = ? and status = 'running'",
                (name,),
            ).fetchall()
        if open_runs and policy == "forbid" and not command.get("force"):
            reason = (
                f"skipped: execution {open_runs[0][0]} is still running and the "
                "job forbids concurrent runs"
            )
            return self._close_at_once(base(targets[0], 0), command, "skipped", reason)

        start_at = command.get("start_at", slot)
        rows = [
            {**EXECUTION_DEFAULTS, **base(target, offset), "started_at": start_at}
            for offset, target in enumerate(targets)
        ]
        self._insert_executions(rows)
        if job_status != "running":
            self._sql("update job set status = 'running' where name = ?", (name,))
        # No pruning here: history keeps finished runs, and these are running.
        replaced = []
        if open_runs and policy == "replace":
            replaced = [{"id": id_, "node_name": node} for id_, node in open_runs]
        return {"executions": rows, "job": body, "replaced": replaced}

    def _insert_executions(self, rows: list[dict[str, Any]]) -> None:
        names = ", ".join(f'"{column}"' for column in EXECUTION_COLUMNS)
        marks = ", ".join("?" * len(EXECUTION_COLUMNS))
        database.connection().executemany(
            f"insert into execution ({names}) values ({marks})",
            [tuple(row[column] for column in EXECUTION_COLUMNS) for row in rows],
        )

    def _close_at_once(
        self, base: dict[str, Any], command: dict[str, Any], status: str, reason: str
    ) -> Result:
        """Record a run that never started: skipped by policy, or no node for it."""
        row = {
            **EXECUTION_DEFAULTS,
            **base,
            "started_at": None,
            "status": status,
            "success": False,
            "finished_at": command["at"],
            "output": reason,
        }
        self._insert_executions([row])
        if status == "failed":
            self._sql(
                "update job set error_count = error_count + 1, last_error = ?,"
                " status = 'failed' where name = ?",
                (command["at"], base["job_name"]),
            )
        else:
            self._sql(
                "update job set skip_count = skip_count + 1 where name = ?",
                (base["job_name"],),
            )
        self._prune(base["job_name"], command["keep"])
        return {status: reason, "executions": [], "closed": base["id"]}

    def _apply_miss(self, seq: int, command: dict[str, Any]) -> Result:
        """Record slots no leader fired, and that the catch-up policy will not run."""
        name = command["job"]
        row = self._sql(
            "select last_scheduled_at from job where name = ?", (name,)
        ).fetchone()
        if row is None:
            return {"ignored": "job deleted"}
        last = row[0]
        slots = [s for s in command["slots"] if last is None or s > last]
        if not slots:
            return {"recorded": 0}
        records = []
        for offset, slot in enumerate(slots):
            execution_id = f"{command['id_prefix']}{offset:04d}"
            records.append(
                {
                    **EXECUTION_DEFAULTS,
                    "id": execution_id,
                    "group": execution_id,
                    "job_name": name,
                    "seq": seq * 100 + min(offset, 99),
                    "scheduled_at": slot,
                    "started_at": None,
                    "node_name": "",
                    "trigger": "schedule",
                    "status": "lost",
                    "success": False,
                    "finished_at": command["at"],
                    "output": command["reason"],
                    "attempt": 1,
                }
            )
        self._insert_executions(records)
        self._sql(
            "update job set lost_count = lost_count + ?, last_scheduled_at = ?"
            " where name = ?",
            (len(slots), max(slots), name),
        )
        self._prune(name, command["keep"])
        return {"recorded": len(slots)}

    def _prune(self, name: str, keep: int) -> None:
        """Keep the newest ``keep`` finished executions of a job."""
        self._sql(
            "delete from execution where id in (select id from execution"
            " where job_name = ? and status != 'running'"
            " order by seq desc limit -1 offset ?)",
            (name, keep),
        )

    def _open_run(self, execution_id: str) -> dict[str, Any] | None:
        """The fields of a running execution that closing it needs; None if closed."""
        row = self._sql(
            'select job_name, status, attempt, scheduled_at, "group", node_name,'
            " started_at, output from execution where id = ?",
            (execution_id,),
        ).fetchone()
        if row is None or row[1] != "running":
            return None
        keys = ("job_name", "status", "attempt", "scheduled_at", "group")
        run = dict(zip(keys + ("node_name", "started_at", "output"), row, strict=True))
        run["id"] = execution_id
        return run

    def _apply_finish(self, seq: int, command: dict[str, Any]) -> Result:
        """Close a running execution with its outcome and update the job."""
        execution_id = command["execution_id"]
        run = self._open_run(execution_id)
        if run is None:
            exists = self._sql(
                "select 1 from execution where id = ?", (execution_id,)
            ).fetchone()
            why = "execution already closed" if exists else "execution not found"
            return {"ignored": why}
        run["success"] = bool(command["success"])
        run["finished_at"] = command["finished_at"]
        self._sql(
            "update execution set status = ?, success = ?, exit_code = ?,"
            " started_at = ?, finished_at = ?, output = ?, output_truncated = ?"
            " where id = ?",
            (
                command.get("status")
                or ("success" if command["success"] else "failed"),
                run["success"],
                command.get("exit_code"),
                command.get("started_at") or run["started_at"],
                run["finished_at"],
                command.get("output", ""),
                bool(command.get("output_truncated")),
                execution_id,
            ),
        )
        outcome = self._record_outcome(run, command)
        if "deleted_job" not in outcome and "keep" in command:
            self._prune(run["job_name"], command["keep"])
        return {"closed": execution_id, **outcome}

    def _record_outcome(self, run: dict[str, Any], command: dict[str, Any]) -> Result:
        """Update the job after a run closed.

        The result has ``owed`` when the run left a retry or dependents' runs
        to fire, and ``deleted_job`` when it deleted its (ephemeral) job.
        """
        name = run["job_name"]
        row = self._sql("select body from job where name = ?", (name,)).fetchone()
        if row is None:
            return {}
        body = json.loads(row[0])
        still_open = self._sql(
            "select 1 from execution where job_name = ? and status = 'running' limit 1",
            (name,),
        ).fetchone()
        success = run["success"]
        status = "running" if still_open else ("success" if success else "failed")
        counter, last = "success_count", "last_success"
        if not success:
            counter, last = "error_count", "last_error"
        self._sql(
            f"update job set {counter} = {counter} + 1, {last} = ?, status = ?"
            " where name = ?",
            (run["finished_at"], status, name),
        )

        owed = False
        if not success and run["attempt"] <= body["retries"]:
            delay = command.get("retry_backoff", 1.0) * 2 ** (run["attempt"] - 1)
            PendingRow.replace(
                id=f"{run['id']}/retry",
                job_name=name,
                due_at=run["finished_at"] + delay,
                trigger="retry",
                attempt=run["attempt"] + 1,
                scheduled_at=run["scheduled_at"],
                origin=run["id"],
                group=run["group"],
                avoid_node=run["node_name"],
            ).execute()
            owed = True
        if success:
            children = self._sql(
                "select name from job where parent_job = ?", (name,)
            ).fetchall()
            for (child,) in children:
                PendingRow.replace(
                    id=f"{run['id']}/parent/{child}",
                    job_name=child,
                    due_at=run["finished_at"],
                    trigger="parent",
                    attempt=1,
                    scheduled_at=run["finished_at"],
                    origin=run["id"],
                ).execute()
                owed = True
            if body["ephemeral"] and not children:
                self._delete_job(name)
                return {"deleted_job": name}
        return {"owed": True} if owed else {}

    def _apply_interrupt(self, seq: int, command: dict[str, Any]) -> Result:
        """Close open executions whose process is gone.

        ``status`` says why: ``interrupted`` when their node restarted, ``lost``
        when their node stopped answering.
        """
        status = command.get("status", "interrupted")
        closed = []
        for execution_id in command["execution_ids"]:
            run = self._open_run(execution_id)
            if run is None:
                continue
            run["success"] = False
            run["finished_at"] = command["at"]
            self._sql(
                "update execution set status = ?, success = 0, finished_at = ?,"
                " output = ? where id = ?",
                (
                    status,
                    command["at"],
                    (run["output"] or "") + command["reason"],
                    execution_id,
                ),
            )
            if status == "lost":
                self._sql(
                    "update job set lost_count = lost_count + 1 where name = ?",
                    (run["job_name"],),
                )
            self._record_outcome(run, command)
            closed.append({"id": execution_id, "job_name": run["job_name"]})
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

    JOB_ROW_COLUMNS = (
        "name",
        "body",
        "parent_job",
        "status",
        "success_count",
        "error_count",
        "skip_count",
        "lost_count",
        "last_success",
        "last_error",
        "last_scheduled_at",
        "created_at",
        "updated_at",
    )
    _JOB_SELECT = f"select {', '.join(JOB_ROW_COLUMNS)} from job"

    @classmethod
    def job_from_row(
        cls, row: tuple[Any, ...], dependents: Iterable[str]
    ) -> dict[str, Any]:
        """A job as the store returns it, from a row of ``JOB_ROW_COLUMNS``."""
        job: dict[str, Any] = json.loads(row[1])
        job.update(zip(cls.JOB_ROW_COLUMNS[3:], row[3:], strict=True))
        job["dependent_jobs"] = sorted(dependents)
        return job

    def dependents(self, name: str) -> list[str]:
        rows = self._sql("select name from job where parent_job = ?", (name,))
        return [child for (child,) in rows]

    def get_job(self, name: str) -> dict[str, Any] | None:
        row = self._sql(self._JOB_SELECT + " where name = ?", (name,)).fetchone()
        if row is None:
            return None
        return self.job_from_row(row, self.dependents(name))

    def list_jobs(self) -> list[dict[str, Any]]:
        rows = self.job_rows()
        children: dict[str, list[str]] = {}
        for row in rows:
            if row[2]:
                children.setdefault(row[2], []).append(row[0])
        return [self.job_from_row(row, children.get(row[0], ())) for row in rows]

    def job_rows(self) -> list[tuple[Any, ...]]:
        """Every job as a plain tuple of ``JOB_ROW_COLUMNS``, by name.

        The raw rows, with the body still JSON text: listing ten thousand jobs
        must not build ten thousand model objects.
        """
        return self._sql(self._JOB_SELECT + " order by name").fetchall()

    def job_count(self) -> int:
        return JobRow.select().count()

    _EXECUTION_SELECT = "select {} from execution".format(
        ", ".join(f'"{column}"' for column in EXECUTION_COLUMNS)
    )

    @staticmethod
    def _execution(row: tuple[Any, ...]) -> dict[str, Any]:
        execution = dict(zip(EXECUTION_COLUMNS, row, strict=True))
        if execution["success"] is not None:
            execution["success"] = bool(execution["success"])
        execution["output_truncated"] = bool(execution["output_truncated"])
        return execution

    def executions(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        """A job's executions, newest first."""
        rows = self._sql(
            self._EXECUTION_SELECT + " where job_name = ? order by seq desc limit ?",
            (name, -1 if limit is None else limit),
        )
        return [self._execution(row) for row in rows]

    def get_execution(self, name: str, execution_id: str) -> dict[str, Any] | None:
        row = self._sql(
            self._EXECUTION_SELECT + " where id = ? and job_name = ?",
            (execution_id, name),
        ).fetchone()
        return None if row is None else self._execution(row)

    def open_executions(self, node_name: str | None = None) -> list[dict[str, Any]]:
        """The runs still open (id, node_name, started_at), on one node or all.

        Read every second by the leader's health round, so fixed SQL and the
        three columns it needs, not every row's output.
        """
        sql = "select id, node_name, started_at from execution where status = ?"
        params: tuple[str, ...] = ("running",)
        if node_name is not None:
            sql += " and node_name = ?"
            params += (node_name,)
        keys = ("id", "node_name", "started_at")
        return [dict(zip(keys, row, strict=True)) for row in self._sql(sql, params)]

    def open_counts(self) -> dict[str, int]:
        """How many runs are open on each node, by node name."""
        rows = self._sql(
            "select node_name, count(*) from execution where status = 'running'"
            " group by node_name"
        )
        return dict(rows.fetchall())

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
        """Write a consistent copy of the database, with raft's own state in it.

        Safe on any thread: the copy reads through a connection of its own
        while the apply connection goes on writing. Raises ValueError when
        SQLite cannot make it.
        """
        copy_database(self.path, path)
        try:
            target = sqlite3.connect(path)
            try:
                # A store restored from a snapshot can hold one (restore_from).
                target.execute("drop table if exists raft_meta")
                target.execute("create table raft_meta (data blob)")
                target.execute("insert into raft_meta values (?)", (raft_meta,))
                target.commit()
            finally:
                target.close()
        except sqlite3.Error as exc:
            raise ValueError(str(exc)) from exc

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


def read_snapshot_meta(path: str) -> bytes:
    """Raft's own state stored in a snapshot file (Store.snapshot_to).

    Raises ValueError when the file is not a readable snapshot.
    """
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            (raft_meta,) = connection.execute("select data from raft_meta").fetchone()
            return bytes(raft_meta)
        finally:
            connection.close()
    except (sqlite3.Error, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


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
