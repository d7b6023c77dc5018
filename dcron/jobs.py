"""The Job and Execution shapes: validating what clients send, and the JSON out.

A job body from a client is checked field by field and turned into the stored
form, a plain dict of the fields a client may set. The server's own fields
(counters, status, ``next``, ``dependent_jobs``) are never taken from a
client; they are added when a job is rendered.

``command`` and ``executor_config.command`` are two spellings of one thing:
the stored form always carries both, equal, so either round-trips.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from dcron import schedule
from dcron.errors import InvalidInput

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
CONCURRENCY = ("allow", "forbid", "replace")
CATCHUP = ("latest", "all", "skip")
DEFAULT_CATCHUP_WINDOW_S = 24 * 3600.0
EXECUTORS = ("shell",)
MAX_RETRIES = 100
EXECUTION_STATUSES = (
    "running",
    "success",
    "failed",
    "skipped",
    "interrupted",
    "lost",
)

# The fields a client sets, with the value a job has when the body leaves it out.
USER_FIELDS: dict[str, Any] = {
    "name": "",
    "displayname": "",
    "schedule": "",
    "timezone": "",
    "command": "",
    "executor": "shell",
    "executor_config": {},
    "owner": "",
    "owner_email": "",
    "disabled": False,
    "tags": {},
    "metadata": {},
    "retries": 0,
    "concurrency": "allow",
    "catchup": "latest",
    "catchup_window": "24h",
    "parent_job": None,
    "processors": {},
    "ephemeral": False,
    "expires_at": None,
}


def check_name(name: Any, field: str = "name") -> str:
    if name is None or name == "":
        raise InvalidInput(field, "required")
    if not isinstance(name, str):
        raise InvalidInput(field, "must be a string")
    if not NAME_RE.match(name):
        raise InvalidInput(field, "use at most 128 letters, digits, '-' or '_'")
    return name


def validate(body: Any, now: datetime) -> dict[str, Any]:
    """Check a client's job body and return the stored form of the job.

    Unknown fields are ignored. Relations to other jobs (the parent exists, no
    cycle) need the store and are checked where the job is applied.
    """
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")

    job: dict[str, Any] = {"name": check_name(body.get("name"))}
    for field in ("displayname", "owner", "owner_email"):
        job[field] = _string(body, field)
    for field in ("disabled", "ephemeral"):
        job[field] = _boolean(body, field)
    for field in ("tags", "metadata"):
        job[field] = _string_map(body, field)
    job["processors"] = _object(body, "processors")
    job["retries"] = _retries(body)
    job["concurrency"] = _choice(body, "concurrency", CONCURRENCY)
    job["catchup"] = _choice(body, "catchup", CATCHUP)
    job["catchup_window"] = _window(body)
    job["executor"] = _choice(body, "executor", EXECUTORS)
    job["parent_job"] = _parent(body, job["name"])

    # The schedule and its zone are checked together: the zone changes when a
    # cron expression fires, and a schedule that never fires is a mistake.
    job["timezone"] = _string(body, "timezone")
    schedule.check_timezone(job["timezone"])
    job["schedule"] = _schedule(body, job, now)
    job["expires_at"] = _time(body, "expires_at")

    job["executor_config"], job["command"] = _executor_config(body)
    return job


def _string(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(field, "must be a string")
    return value


def _boolean(body: dict[str, Any], field: str) -> bool:
    value = body.get(field)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInput(field, "must be true or false")
    return value


def _object(body: dict[str, Any], field: str) -> dict[str, Any]:
    value = body.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(field, "must be an object")
    return value


def _string_map(body: dict[str, Any], field: str) -> dict[str, str]:
    value = _object(body, field)
    for key, item in value.items():
        if not isinstance(item, str):
            raise InvalidInput(f"{field}.{key}", "must be a string")
    return dict(value)


def _retries(body: dict[str, Any]) -> int:
    value = body.get("retries")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("retries", "must be an integer")
    if not 0 <= value <= MAX_RETRIES:
        raise InvalidInput("retries", f"must be between 0 and {MAX_RETRIES}")
    return value


def _choice(body: dict[str, Any], field: str, choices: tuple[str, ...]) -> str:
    value = body.get(field)
    if value is None or value == "":
        return choices[0]
    if value not in choices:
        raise InvalidInput(field, f"must be one of {', '.join(choices)}")
    return str(value)


def _window(body: dict[str, Any]) -> str:
    value = body.get("catchup_window")
    if value is None or value == "":
        return USER_FIELDS["catchup_window"]
    if not isinstance(value, str):
        raise InvalidInput("catchup_window", "must be a duration like 6h")
    try:
        seconds = schedule.parse_duration(value).total_seconds()
    except ValueError as exc:
        raise InvalidInput("catchup_window", "must be a duration like 6h") from exc
    if seconds <= 0:
        raise InvalidInput("catchup_window", "must be positive")
    return value


def window_seconds(value: str | None) -> float:
    """A stored ``catchup_window`` in seconds."""
    if not value:
        return DEFAULT_CATCHUP_WINDOW_S
    return schedule.parse_duration(value).total_seconds()


def _parent(body: dict[str, Any], name: str) -> str | None:
    value = body.get("parent_job")
    if value is None or value == "":
        return None
    parent = check_name(value, "parent_job")
    if parent == name:
        raise InvalidInput("parent_job", "a job cannot be its own parent")
    return parent


def _schedule(body: dict[str, Any], job: dict[str, Any], now: datetime) -> str:
    value = body.get("schedule")
    if value is None or value == "":
        if job["parent_job"]:
            return ""
        raise InvalidInput("schedule", "required")
    if not isinstance(value, str):
        raise InvalidInput("schedule", "must be a string")
    parsed = schedule.parse(value, job["timezone"])
    if value.strip().startswith("@at") and parsed.next_after(now) is None:
        raise InvalidInput("schedule", "@at time is in the past")
    return value.strip()


def _time(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInput(field, "must be an RFC 3339 time")
    try:
        return schedule.format_time(schedule.parse_time(value))
    except ValueError as exc:
        raise InvalidInput(field, "must be an RFC 3339 time") from exc


def _executor_config(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    config = dict(_object(body, "executor_config"))
    command = body.get("command")
    inner = config.get("command")
    if command is not None and not isinstance(command, str):
        raise InvalidInput("command", "must be a string")
    if inner is not None and not isinstance(inner, str):
        raise InvalidInput("executor_config.command", "must be a string")
    if command and inner and command != inner:
        raise InvalidInput("command", "differs from executor_config.command")
    command = command or inner or ""
    if not command.strip():
        raise InvalidInput("command", "required")
    config["command"] = command

    if "shell" in config:
        config["shell"] = _flag(config["shell"], "executor_config.shell")
    if "env" in config:
        env_dict(config["env"])
    if config.get("cwd") is not None and not isinstance(config["cwd"], str):
        raise InvalidInput("executor_config.cwd", "must be a string")
    if config.get("timeout") not in (None, ""):
        timeout_seconds(config["timeout"])
    return config, command


def _flag(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidInput(field, "must be true or false")


def env_dict(value: Any) -> dict[str, str]:
    """The job's environment: an object, or Dkron's ``"K=V,K2=V2"`` string."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(item, str):
                raise InvalidInput(f"executor_config.env.{key}", "must be a string")
        return dict(value)
    if isinstance(value, str):
        env: dict[str, str] = {}
        for pair in filter(None, (part.strip() for part in value.split(","))):
            key, sep, item = pair.partition("=")
            if not sep or not key:
                raise InvalidInput("executor_config.env", "expected KEY=VALUE pairs")
            env[key] = item
        return env
    raise InvalidInput("executor_config.env", "must be an object or a string")


def timeout_seconds(value: Any) -> float | None:
    """A timeout as seconds (a number) or a duration (``"30s"``); None for none."""
    if value is None or value == "" or value == 0:
        return None
    if isinstance(value, bool):
        raise InvalidInput("executor_config.timeout", "must be a duration like 30s")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = schedule.parse_duration(value).total_seconds()
            except ValueError as exc:
                raise InvalidInput(
                    "executor_config.timeout", "must be a duration like 30s"
                ) from exc
    else:
        raise InvalidInput("executor_config.timeout", "must be a duration like 30s")
    if seconds < 0:
        raise InvalidInput("executor_config.timeout", "must not be negative")
    return seconds or None


def next_run(job: dict[str, Any], now: datetime) -> datetime | None:
    """When the scheduler will next fire this job by its schedule, or None."""
    if job["disabled"] or not job["schedule"]:
        return None
    after = now
    last = job.get("last_scheduled_at")
    if last is not None:
        after = max(after, datetime.fromtimestamp(last, UTC))
    try:
        fire = schedule.parse(job["schedule"], job["timezone"]).next_after(after)
    except InvalidInput:
        return None
    expires = job.get("expires_at")
    if fire is not None and expires and fire > schedule.parse_time(expires):
        return None
    return fire


def as_json(job: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The job as the API returns it: user fields, then the server's own."""
    out = {field: job.get(field, default) for field, default in USER_FIELDS.items()}
    out["dependent_jobs"] = sorted(job.get("dependent_jobs") or [])
    out["success_count"] = job.get("success_count", 0)
    out["error_count"] = job.get("error_count", 0)
    out["skip_count"] = job.get("skip_count", 0)
    out["lost_count"] = job.get("lost_count", 0)
    out["last_success"] = _time_out(job.get("last_success"))
    out["last_error"] = _time_out(job.get("last_error"))
    out["status"] = job.get("status", "")
    out["next"] = schedule.format_time(next_run(job, now))
    return out


def execution_json(
    row: dict[str, Any], output_limit: int | None = None
) -> dict[str, Any]:
    """An execution as the API returns it; ``output_limit`` keeps the last N bytes."""
    output = row["output"]
    truncated = bool(row["output_truncated"])
    if output_limit is not None:
        raw = output.encode()
        if len(raw) > output_limit:
            output = raw[len(raw) - output_limit :].decode(errors="replace")
            truncated = True
    return {
        "id": row["id"],
        "group": row["group"],
        "job_name": row["job_name"],
        "scheduled_at": _time_out(row["scheduled_at"]),
        "started_at": _time_out(row["started_at"]),
        "finished_at": _time_out(row["finished_at"]),
        "status": row["status"],
        "success": row["success"],
        "exit_code": row["exit_code"],
        "output": output,
        "output_truncated": truncated,
        "node_name": row["node_name"],
        "attempt": row["attempt"],
        "trigger": row["trigger"],
    }


def _time_out(value: float | None) -> str | None:
    if value is None:
        return None
    return schedule.format_time(datetime.fromtimestamp(value, UTC))


def parents_first(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Order job bodies so that a job named as ``parent_job`` precedes its children.

    Keeps the given order otherwise. A parent outside the list is the store's
    business, and so is a cycle: the store refuses it when applying.
    """
    by_name = {job["name"]: job for job in found}
    ordered: list[dict[str, Any]] = []
    placed: set[str] = set()

    def place(job: dict[str, Any], seen: set[str]) -> None:
        name = job["name"]
        if name in placed or name in seen:
            return
        parent = by_name.get(job.get("parent_job") or "")
        if parent is not None:
            place(parent, seen | {name})
        placed.add(name)
        ordered.append(job)

    for job in found:
        place(job, set())
    return ordered
