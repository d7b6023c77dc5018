"""The HTTP API: Tornado handlers, the route table and the one JSON error body.

Reads come from the local store. Writes build a command, submit it through
replication and answer once it is committed (shared/DESIGN.md, invariant 1);
a handler never writes SQLite. Every route also answers under ``/v1`` and
``/job/`` is accepted for ``/jobs/``, so Dkron's clients work unchanged.

Errors have one shape, ``{"error": "<message naming the field>"}``, produced
in ``BaseHandler.write_error``; ``DcronError`` subclasses carry their status.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from datetime import UTC, datetime
from typing import Any, Protocol

import tornado.web
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError

from dcron import jobs, scheduler
from dcron.errors import DcronError, InvalidInput, NotFound, TooLarge, Unavailable
from dcron.joblist import JobList, Listed
from dcron.store import Store, copy_database, read_backup_jobs

logger = logging.getLogger(__name__)

SORTABLE = (
    "name",
    "displayname",
    "schedule",
    "owner",
    "status",
    "next",
    "disabled",
    "success_count",
    "error_count",
    "last_success",
    "last_error",
)
# What JobsHandler filters and sorts by, kept beside each job's listed JSON.
LISTED_FIELDS = ("metadata", "status", "disabled", *SORTABLE)


class NodeView(Protocol):
    """What the API needs from a node."""

    name: str
    store: Store

    async def submit(self, command: dict[str, Any]) -> dict[str, Any]: ...
    async def spawn_room(self) -> None: ...
    def info(self) -> dict[str, Any]: ...
    def health(self) -> dict[str, Any]: ...
    async def members(self) -> list[dict[str, Any]]: ...
    async def remove_member(self, name: str) -> dict[str, Any]: ...
    async def leave(self) -> None: ...
    def leader(self) -> dict[str, Any] | None: ...
    def place(self, job: dict[str, Any], avoid: str = "") -> list[str]: ...
    def running_output(self, execution_id: str) -> str | None: ...
    async def remote_output(self, execution: dict[str, Any]) -> str | None: ...

    @property
    def config(self) -> Any: ...


class BaseHandler(tornado.web.RequestHandler):
    node: NodeView

    def initialize(self, node: NodeView) -> None:
        self.node = node

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")

    def send(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(payload, indent=None) + "\n")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        message = self._reason
        exc_info = kwargs.get("exc_info")
        if exc_info is not None:
            exc = exc_info[1]
            if isinstance(exc, DcronError):
                message = exc.message
            elif isinstance(exc, tornado.web.HTTPError) and exc.log_message:
                message = exc.log_message
        self.finish(json.dumps({"error": message.lower()}) + "\n")

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, DcronError):
            self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, DcronError):
            return
        super().log_exception(typ, value, tb)

    # ---- request parsing ---------------------------------------------------

    def json_body(self) -> Any:
        body = self.request.body
        if len(body) > self.node.config.max_body_bytes:
            raise TooLarge(f"body: larger than {self.node.config.max_body_bytes} bytes")
        if not body.strip():
            raise InvalidInput("body", "empty; expected a JSON object")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput("body", f"not valid JSON: {exc}") from exc

    def int_arg(self, name: str, default: int | None, minimum: int = 0) -> int | None:
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise InvalidInput(name, "must be an integer") from None
        if value < minimum:
            raise InvalidInput(name, f"must be at least {minimum}")
        return value

    def job_or_404(self, name: str) -> dict[str, Any]:
        job = self.node.store.get_job(name)
        if job is None:
            raise NotFound(f"job {name} not found")
        return job

    async def commit(self, command: dict[str, Any]) -> dict[str, Any]:
        """Submit a command; turn a refusal from the store into its error."""
        result = await self.node.submit(command)
        if "error" in result:
            error = DcronError(result["error"])
            error.status = result.get("status", 500)
            raise error
        return result

    def job_json(self, job: dict[str, Any]) -> dict[str, Any]:
        return jobs.as_json(job, datetime.now(UTC))

    async def put_job(self, body: Any, path_name: str | None = None) -> None:
        if path_name is not None and isinstance(body, dict):
            body.setdefault("name", path_name)
            if body.get("name") != path_name:
                raise InvalidInput("name", "does not match the job in the path")
        job = jobs.validate(body, datetime.now(UTC))
        result = await self.commit({"op": "put_job", "job": job, "at": time.time()})
        stored = result["job"]
        logger.info(
            "job %s %s", job["name"], "created" if result["created"] else "replaced"
        )
        if self.get_query_argument("runoncreate", "") == "true":
            await self.run_job(stored)
        self.send(self.job_json(stored), 201)

    async def run_job(self, job: dict[str, Any], force: bool = False) -> dict:
        # A node given runs faster than it starts them makes the caller wait.
        await self.node.spawn_room()
        command = scheduler.fire_command(
            job,
            time.time(),
            "manual",
            self.node.place(job),
            self.node.config.executions_per_job,
            force=force,
        )
        result = await self.commit(command)
        return result


class InfoHandler(BaseHandler):
    def get(self) -> None:
        self.send(self.node.info())


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.send(self.node.health())


class MembersHandler(BaseHandler):
    async def get(self) -> None:
        self.send(await self.node.members())


class MemberHandler(BaseHandler):
    async def delete(self, name: str) -> None:
        self.send(await self.node.remove_member(name))


class LeaveHandler(BaseHandler):
    async def post(self) -> None:
        # Answer first: leaving ends with this node stopping.
        self.send({"leaving": self.node.name})
        IOLoop.current().add_callback(self.node.leave)


class LeaderHandler(BaseHandler):
    def get(self) -> None:
        leader = self.node.leader()
        if leader is None:
            raise Unavailable("no leader")
        self.send(leader)


class JobsHandler(BaseHandler):
    """The job list answers from each job's JSON kept by a JobList."""

    def get(self) -> None:
        job_list: JobList = self.application.settings["job_list"]
        found = job_list.listed(self.node.store.job_rows(), datetime.now(UTC))
        found = self._filter(found)
        found = self._sort(found)
        self.set_header("X-Total-Count", str(len(found)))
        self.set_header("Access-Control-Expose-Headers", "X-Total-Count")
        start = self.int_arg("_start", 0) or 0
        end = self.int_arg("_end", None)
        # The kept texts joined as json.dumps joins a list, so the answer is
        # the one send() would give for the same jobs.
        self.finish("[" + ", ".join(j.json for j in found[start:end]) + "]\n")

    def _filter(self, found: list[Listed]) -> list[Listed]:
        for key, values in self.request.query_arguments.items():
            if key.startswith("metadata[") and key.endswith("]"):
                field = key[len("metadata[") : -1]
                wanted = values[-1].decode()
                found = [j for j in found if j.fields["metadata"].get(field) == wanted]
        query = self.get_query_argument("q", "")
        if query:
            found = [j for j in found if query.lower() in j.fields["name"].lower()]
        status = self.get_query_argument("status", "")
        if status:
            found = [j for j in found if j.fields["status"] == status]
        disabled = self.get_query_argument("disabled", "")
        if disabled:
            if disabled not in ("true", "false"):
                raise InvalidInput("disabled", "must be true or false")
            found = [j for j in found if j.fields["disabled"] == (disabled == "true")]
        return found

    def _sort(self, found: list[Listed]) -> list[Listed]:
        field = self.get_query_argument("_sort", "name")
        if field not in SORTABLE:
            raise InvalidInput("_sort", f"must be one of {', '.join(SORTABLE)}")
        order = self.get_query_argument("_order", "ASC").upper()
        if order not in ("ASC", "DESC"):
            raise InvalidInput("_order", "must be ASC or DESC")
        # None sorts first ascending, so unset times and never-run jobs group.
        return sorted(
            found,
            key=lambda j: (
                j.fields[field] is not None,
                j.fields[field],
                j.fields["name"],
            ),
            reverse=order == "DESC",
        )

    async def post(self) -> None:
        await self.put_job(self.json_body())

    async def put(self) -> None:
        await self.put_job(self.json_body())


class JobHandler(BaseHandler):
    def get(self, name: str) -> None:
        self.send(self.job_json(self.job_or_404(name)))

    async def delete(self, name: str) -> None:
        self.job_or_404(name)
        result = await self.commit({"op": "delete_job", "name": name})
        logger.info("job %s deleted", name)
        self.send(self.job_json(result["job"]))

    async def post(self, name: str) -> None:
        await self._run(name)

    async def put(self, name: str) -> None:
        # Dkron's meaning: a PUT with a job body creates or replaces that job;
        # without a body it runs the job now.
        if self.request.body.strip():
            await self.put_job(self.json_body(), name)
        else:
            await self._run(name)

    async def _run(self, name: str) -> None:
        job = self.job_or_404(name)
        force = self.get_query_argument("force", "") == "true"
        await self.run_job(job, force=force)
        logger.info("job %s run on request", name)
        self.send(self.job_json(self.job_or_404(name)), 202)


class RunHandler(JobHandler):
    async def post(self, name: str) -> None:
        await self._run(name)


class ToggleHandler(BaseHandler):
    async def post(self, name: str) -> None:
        self.job_or_404(name)
        result = await self.commit(
            {"op": "toggle_job", "name": name, "at": time.time()}
        )
        self.send(self.job_json(result["job"]))


class ExecutionsHandler(BaseHandler):
    def get(self, name: str) -> None:
        self.job_or_404(name)
        limit = self.int_arg("limit", None, minimum=1)
        output_limit = self.int_arg("output_size_limit", None)
        rows = self.node.store.executions(name, limit)
        self.set_header("X-Total-Count", str(len(rows)))
        self.send([self._with_output(row, output_limit) for row in rows])

    def _with_output(self, row: dict[str, Any], output_limit: int | None) -> dict:
        if row["status"] == "running":
            so_far = self.node.running_output(row["id"])
            if so_far is not None:
                row = dict(row, output=so_far)
        return jobs.execution_json(row, output_limit)

    async def delete(self, name: str) -> None:
        self.job_or_404(name)
        result = await self.commit({"op": "clear_executions", "name": name})
        self.send(self.job_json(result["job"]))


class ExecutionHandler(ExecutionsHandler):
    async def get(self, name: str, execution_id: str) -> None:  # type: ignore[override]
        self.job_or_404(name)
        row = self.node.store.get_execution(name, execution_id)
        if row is None:
            raise NotFound(f"execution {execution_id} of job {name} not found")
        # A run's output lives with its process until it finishes: ask the
        # node running it (``local`` stops the question going round).
        local = self.get_query_argument("local", "") == "true"
        if row["status"] == "running" and row["node_name"] != self.node.name:
            if not local:
                so_far = await self.node.remote_output(row)
                if so_far is not None:
                    row = dict(row, output=so_far)
        self.send(self._with_output(row, None))


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise NotFound(f"no route {self.request.path}")


def routes(node: NodeView) -> list[tuple[str, type, dict[str, Any]]]:
    v1 = r"(?:/v1)?"
    jobs_ = r"/jobs?"
    name = r"([^/]+)"
    table: list[tuple[str, type]] = [
        (rf"{v1}/?", InfoHandler),
        (rf"{v1}/health", HealthHandler),
        (rf"{v1}/members/?", MembersHandler),
        (rf"{v1}/members/{name}/?", MemberHandler),
        (rf"{v1}/leave/?", LeaveHandler),
        (rf"{v1}/leader/?", LeaderHandler),
        (rf"{v1}/backup/?", BackupHandler),
        (rf"{v1}/restore/?", RestoreHandler),
        (rf"{v1}{jobs_}/?", JobsHandler),
        (rf"{v1}{jobs_}/{name}/run/?", RunHandler),
        (rf"{v1}{jobs_}/{name}/toggle/?", ToggleHandler),
        (rf"{v1}{jobs_}/{name}/executions/?", ExecutionsHandler),
        (rf"{v1}{jobs_}/{name}/executions/([^/]+)/?", ExecutionHandler),
        (rf"{v1}/executions/{name}/?", ExecutionsHandler),
        (rf"{v1}{jobs_}/{name}/?", JobHandler),
    ]
    return [(pattern, handler, {"node": node}) for pattern, handler in table]


def make_app(node: NodeView) -> tornado.web.Application:
    return tornado.web.Application(
        routes(node),  # type: ignore[arg-type]
        default_handler_class=NotFoundHandler,
        default_handler_args={"node": node},
        log_function=_log_request,
        job_list=JobList(LISTED_FIELDS),
    )


def _log_request(handler: tornado.web.RequestHandler) -> None:
    status = handler.get_status()
    level = (
        logging.DEBUG
        if status < 400
        else (logging.WARNING if status < 500 else logging.ERROR)
    )
    logger.log(
        level,
        "%d %s %s %.1fms",
        status,
        handler.request.method,
        handler.request.uri,
        1000 * handler.request.request_time(),
    )


# ---- backup and restore ----------------------------------------------------

# A restore body is a whole store, executions included, so it may be far
# larger than a job body (--max-restore-bytes, not --max-body-bytes). It
# streams to a file beside the store instead of into memory.
BACKUP_CHUNK_BYTES = 1024 * 1024


def jobs_in_backup(path: str) -> list[dict[str, Any]]:
    """The jobs stored in a backup file, re-validated, parents before children.

    Raises InvalidInput naming ``body`` when the file is not a dcron backup.
    """
    try:
        rows = read_backup_jobs(path)
    except ValueError as exc:
        raise InvalidInput("body", f"not a dcron backup: {exc}") from exc

    found = []
    for name, body, updated_at in rows:
        try:
            stored = json.loads(body)
            # Checked as of when it was stored: an @at job whose time has
            # passed since comes back as it was, spent, instead of refused.
            found.append(jobs.validate(stored, datetime.fromtimestamp(updated_at, UTC)))
        except (ValueError, TypeError) as exc:
            raise InvalidInput("body", f"job {name} is not readable: {exc}") from exc
        except DcronError as exc:
            raise InvalidInput("body", f"job {name}: {exc.message}") from exc
    return jobs.parents_first(found)


class BackupHandler(BaseHandler):
    """A consistent copy of this node's store, as a SQLite file."""

    async def get(self) -> None:
        loop = IOLoop.current()
        folder = os.path.dirname(self.node.store.path)
        handle, path = tempfile.mkstemp(prefix=".backup-", suffix=".db", dir=folder)
        os.close(handle)
        try:
            try:
                await loop.run_in_executor(
                    None, copy_database, self.node.store.path, path
                )
            except ValueError as exc:
                raise DcronError(f"backup: cannot copy the store: {exc}") from exc
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header(
                "Content-Disposition",
                f'attachment; filename="dcron-{self.node.name}-{stamp}.db"',
            )
            self.set_header("Content-Length", str(os.path.getsize(path)))
            with open(path, "rb") as source:
                while chunk := await loop.run_in_executor(
                    None, source.read, BACKUP_CHUNK_BYTES
                ):
                    self.write(chunk)
                    await self.flush()
        except StreamClosedError:
            logger.info("backup for %s cancelled by the client", self.request.remote_ip)
            return
        finally:
            os.remove(path)
        logger.info("store backed up for %s", self.request.remote_ip)
        self.finish()


@tornado.web.stream_request_body
class RestoreHandler(BaseHandler):
    """Load the jobs of a backup: each one is a put_job command through raft."""

    path = ""
    received = 0
    sink: Any = None

    def limit(self) -> int:
        return int(self.node.config.max_restore_bytes)

    def prepare(self) -> None:
        limit = self.limit()
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            raise TooLarge(f"body: larger than {limit} bytes")
        self.request.connection.set_max_body_size(limit)  # type: ignore[union-attr]
        folder = os.path.dirname(self.node.store.path)
        handle, self.path = tempfile.mkstemp(
            prefix=".restore-", suffix=".db", dir=folder
        )
        self.sink = os.fdopen(handle, "wb")

    async def data_received(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received <= self.limit():
            await IOLoop.current().run_in_executor(None, self.sink.write, chunk)

    async def post(self) -> None:
        self.sink.close()
        if self.received > self.limit():
            raise TooLarge(f"body: larger than {self.limit()} bytes")
        if self.received == 0:
            raise InvalidInput("body", "empty; expected a file from GET /backup")
        loop = IOLoop.current()
        found = await loop.run_in_executor(None, jobs_in_backup, self.path)
        # Refuse before writing anything: a parent must be in the file or here.
        names = {job["name"] for job in found}
        for job in found:
            parent = job["parent_job"]
            if parent and parent not in names and not self.node.store.get_job(parent):
                raise InvalidInput("body", f"job {job['name']}: no parent {parent}")

        created = 0
        for job in found:
            result = await self.commit({"op": "put_job", "job": job, "at": time.time()})
            created += bool(result["created"])
        logger.info("restored %d jobs, %d of them new", len(found), created)
        self.send(
            {
                "jobs": len(found),
                "created": created,
                "replaced": len(found) - created,
                "names": [job["name"] for job in found],
            }
        )

    def on_finish(self) -> None:
        self._discard()

    def on_connection_close(self) -> None:
        self._discard()

    def _discard(self) -> None:
        if self.sink is not None:
            self.sink.close()
        if self.path and os.path.exists(self.path):
            os.remove(self.path)
        self.path = ""
