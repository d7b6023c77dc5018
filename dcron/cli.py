"""The ``dcron`` command line: ``agent`` runs a node; the other verbs are tools
(``version``, ``keygen``) or clients of a running node (``jobs``,
``executions``, ``members``, ``leave``, ``backup``, ``restore``).

Client verbs talk to ``--address`` (or ``$DCRON_ADDRESS``), print aligned
tables for people and the API's JSON with ``--json``. Exit status: 0 when the
call worked, 1 when it failed (the node refused it or could not be reached;
one line on stderr says why), 2 for a usage error. A bad setting of ``agent``
also ends the process with status 2 and one line naming the flag, before
anything is started.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from dcron import __version__, client, config, jobs
from dcron.errors import ConfigError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
KEY_BYTES = 32
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EMPTY = "-"
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


class UsageError(Exception):
    """The command line or a file it names is wrong (exit status 2)."""


# ---- the parser ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # The client options also go before the verb: dcron --address X jobs list.
    parser = argparse.ArgumentParser(
        prog="dcron",
        description="dcron: a distributed cron on a Raft-replicated SQLite store.",
        parents=[_client_options()],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    agent = commands.add_parser(
        "agent",
        help="run a node (with --server: a voting server that serves the API)",
        description="Run a dcron node. Every setting is also read from the "
        "environment (DCRON_<NAME>) and from the TOML file given by --config; "
        "a flag beats the environment, which beats the file.",
    )
    config.add_arguments(agent)
    commands.add_parser("version", help="print the version")
    commands.add_parser("keygen", help="print a new random key for --encrypt")
    _add_job_verbs(commands)
    _add_cluster_verbs(commands)
    return parser


def _client_options() -> argparse.ArgumentParser:
    """--address and --json, accepted before or after a verb's own words."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--address",
        default=argparse.SUPPRESS,
        help=f"the node's HTTP address (default: ${client.ADDRESS_ENV}, "
        f"else {client.DEFAULT_ADDRESS})",
    )
    options.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the API's JSON answer instead of a table",
    )
    return options


def _add_job_verbs(commands: Any) -> None:
    options = _client_options()
    jobs_parser = commands.add_parser(
        "jobs", parents=[options], help="list, show, run, apply or delete jobs"
    )
    verbs = jobs_parser.add_subparsers(dest="jobs_command", metavar="ACTION")
    verbs.add_parser("list", parents=[options], help="list every job")
    get = verbs.add_parser("get", parents=[options], help="show one job")
    get.add_argument("name")
    run = verbs.add_parser("run", parents=[options], help="run a job now")
    run.add_argument("name")
    run.add_argument(
        "--force",
        action="store_true",
        help="run even while a concurrency=forbid job is running",
    )
    apply = verbs.add_parser(
        "apply",
        parents=[options],
        help="create or replace the jobs in a JSON file",
        description="Create or replace each job in FILE: one job object or a "
        "list of them, parents before children. Stops at the first job the node "
        "refuses; the jobs before it stay applied.",
    )
    apply.add_argument("file", metavar="FILE", help="a JSON file, or - for stdin")
    delete = verbs.add_parser(
        "delete", parents=[options], help="delete a job and its executions"
    )
    delete.add_argument("name")
    toggle = verbs.add_parser(
        "toggle", parents=[options], help="disable an enabled job, or enable it"
    )
    toggle.add_argument("name")

    executions = commands.add_parser(
        "executions", parents=[options], help="list a job's executions, newest first"
    )
    executions.add_argument("name")
    executions.add_argument(
        "--limit", type=_positive_int, metavar="N", help="show only the newest N"
    )


def _add_cluster_verbs(commands: Any) -> None:
    options = _client_options()
    commands.add_parser(
        "leave",
        parents=[options],
        help="make the node at --address leave its cluster and stop",
    )
    members = commands.add_parser(
        "members", parents=[options], help="list or remove cluster members"
    )
    actions = members.add_subparsers(dest="members_command", metavar="ACTION")
    remove = actions.add_parser(
        "remove", parents=[options], help="remove a member that is gone for good"
    )
    remove.add_argument("name", help="the member's node name")
    backup = commands.add_parser(
        "backup",
        parents=[options],
        help="save a consistent copy of the node's store (a SQLite file)",
    )
    backup.add_argument("file", metavar="FILE", help="where to write it; - for stdout")
    restore = commands.add_parser(
        "restore",
        parents=[options],
        help="load the jobs of a backup into the cluster",
    )
    restore.add_argument("file", metavar="FILE", help="a file made by dcron backup")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# ---- main ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"dcron {__version__}")
        return EXIT_OK
    if args.command == "agent":
        return run_agent(vars(args))
    if args.command == "keygen":
        print(base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode())
        return EXIT_OK
    if args.command in VERBS:
        return run_client_verb(args)
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def run_client_verb(args: argparse.Namespace) -> int:
    node = client.Client(getattr(args, "address", None) or client.default_address())
    as_json = getattr(args, "json", False)
    try:
        VERBS[args.command](node, args, as_json)
    except UsageError as exc:
        print(f"dcron: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except client.ClientError as exc:
        print(f"dcron: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# ---- client verbs ---------------------------------------------------------------


def jobs_verb(node: client.Client, args: argparse.Namespace, as_json: bool) -> None:
    action = args.jobs_command
    if action is None:
        raise UsageError("jobs: say list, get, run, apply, delete or toggle")
    if action == "list":
        found = node.call("GET", "/jobs")
        show(found, as_json, lambda: job_table(found))
    elif action == "get":
        job = node.call("GET", client.path_of("jobs", args.name))
        show(job, as_json, lambda: job_details(job))
    elif action == "run":
        query = "?force=true" if args.force else ""
        job = node.call("POST", client.path_of("jobs", args.name, "run") + query)
        show(job, as_json, lambda: f"{args.name}: run requested")
    elif action == "apply":
        apply_jobs(node, read_jobs(args.file), as_json)
    elif action == "delete":
        job = node.call("DELETE", client.path_of("jobs", args.name))
        show(job, as_json, lambda: f"{args.name}: deleted")
    elif action == "toggle":
        job = node.call("POST", client.path_of("jobs", args.name, "toggle"))
        state = "disabled" if job["disabled"] else "enabled"
        show(job, as_json, lambda: f"{args.name}: {state}")


def executions_verb(
    node: client.Client, args: argparse.Namespace, as_json: bool
) -> None:
    path = client.path_of("jobs", args.name, "executions")
    if args.limit:
        path += f"?limit={args.limit}"
    runs = node.call("GET", path)
    show(runs, as_json, lambda: execution_table(runs))


def members_verb(node: client.Client, args: argparse.Namespace, as_json: bool) -> None:
    if getattr(args, "members_command", None) == "remove":
        member = node.call("DELETE", client.path_of("members", args.name))
        show(member, as_json, lambda: f"{member['name']}: removed")
        return
    members = node.call("GET", "/members")
    show(members, as_json, lambda: member_table(members))


def leave_verb(node: client.Client, args: argparse.Namespace, as_json: bool) -> None:
    answer = node.call("POST", "/leave")
    show(answer, as_json, lambda: f"{answer['leaving']} is leaving the cluster")


def backup_verb(node: client.Client, args: argparse.Namespace, as_json: bool) -> None:
    if args.file == "-":
        size = _save(node, sys.stdout.buffer)
    else:
        # Write beside the target and rename, so a failed download never
        # leaves a half backup under the name of a good one.
        partial = args.file + ".partial"
        try:
            with open(partial, "wb") as sink:
                size = _save(node, sink)
            os.replace(partial, args.file)
        except OSError as exc:
            raise UsageError(f"{args.file}: {exc.strerror or exc}") from exc
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    if args.file != "-":
        answer = {"file": args.file, "bytes": size}
        show(answer, as_json, lambda: f"backup of {size} bytes written to {args.file}")


def _save(node: client.Client, sink: Any) -> int:
    size = 0
    for chunk in node.download("/backup"):
        sink.write(chunk)
        size += len(chunk)
    return size


def restore_verb(node: client.Client, args: argparse.Namespace, as_json: bool) -> None:
    try:
        with open(args.file, "rb") as source:
            data = source.read()
    except OSError as exc:
        raise UsageError(f"{args.file}: {exc.strerror or exc}") from exc
    answer = node.upload("/restore", data)
    show(
        answer,
        as_json,
        lambda: (
            f"restored {answer['jobs']} jobs: {answer['created']} created, "
            f"{answer['replaced']} replaced"
        ),
    )


VERBS: dict[str, Callable[[client.Client, argparse.Namespace, bool], None]] = {
    "jobs": jobs_verb,
    "executions": executions_verb,
    "members": members_verb,
    "leave": leave_verb,
    "backup": backup_verb,
    "restore": restore_verb,
}


def read_jobs(path: str) -> list[dict[str, Any]]:
    """The jobs of a JSON file (one object or a list), parents first."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        data = json.loads(text)
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise UsageError(f"{path}: not valid JSON: {exc}") from exc

    found = data if isinstance(data, list) else [data]
    for position, job in enumerate(found):
        if not isinstance(job, dict) or not isinstance(job.get("name"), str):
            raise UsageError(f"{path}: job {position + 1} is not an object with a name")
    return jobs.parents_first(found)


def apply_jobs(node: client.Client, found: list[dict[str, Any]], as_json: bool) -> None:
    existing = {job["name"] for job in node.call("GET", "/jobs")}
    stored = []
    for job in found:
        name = job["name"]
        try:
            stored.append(node.call("POST", "/jobs", job))
        except client.ClientError as exc:
            raise client.ClientError(f"job {name}: {exc.message}", exc.status) from exc
        if not as_json:
            print(f"{name}: {'replaced' if name in existing else 'created'}")
    if as_json:
        print(json.dumps(stored, indent=2))


# ---- output ---------------------------------------------------------------------


def show(answer: Any, as_json: bool, text: Callable[[], str]) -> None:
    """Print the API's answer as JSON, or as text for people."""
    print(json.dumps(answer, indent=2) if as_json else text())


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned columns: a header line, then one line per row."""
    cells = [list(headers)] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) for cell, width in zip(line, widths, strict=True)
        ).rstrip()
        for line in cells
    )


def _cell(value: Any) -> str:
    if value is None or value == "":
        return EMPTY
    if isinstance(value, str) and TIME_RE.match(value):
        # Whole seconds are enough in a table; --json keeps the full time.
        return value[:19] + "Z"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ",".join(f"{key}={item}" for key, item in value.items()) or EMPTY
    return str(value)


def job_table(found: list[dict[str, Any]]) -> str:
    rows = [
        (
            job["name"],
            job["schedule"],
            job["timezone"] or "UTC",
            "disabled" if job["disabled"] else "enabled",
            job["status"],
            job["next"],
            job["success_count"],
            job["error_count"],
        )
        for job in found
    ]
    headers = ("NAME", "SCHEDULE", "TIMEZONE", "STATE", "LAST", "NEXT", "OK", "FAILED")
    return table(headers, rows) if rows else "no jobs"


def job_details(job: dict[str, Any]) -> str:
    width = max(len(key) for key in job)
    lines = []
    for key, value in job.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else _cell(value)
        lines.append(f"{key + ':':<{width + 1}} {shown}")
    return "\n".join(lines)


def execution_table(runs: list[dict[str, Any]]) -> str:
    rows = [
        (
            run["id"],
            run["status"],
            run["trigger"],
            run["attempt"],
            run["node_name"],
            run["started_at"],
            _duration(run["started_at"], run["finished_at"]),
            run["exit_code"],
        )
        for run in runs
    ]
    headers = (
        "ID",
        "STATUS",
        "TRIGGER",
        "ATTEMPT",
        "NODE",
        "STARTED",
        "TOOK",
        "EXIT",
    )
    return table(headers, rows) if rows else "no executions"


def _duration(started: str | None, finished: str | None) -> str:
    if not started or not finished:
        return EMPTY
    seconds = (
        datetime.fromisoformat(finished) - datetime.fromisoformat(started)
    ).total_seconds()
    return f"{seconds:.1f}s"


def member_table(members: list[dict[str, Any]]) -> str:
    rows = [
        (
            member["name"],
            member["role"],
            member["status"],
            member["raft_addr"],
            member["http_addr"],
            member["tags"],
        )
        for member in members
    ]
    headers = ("NAME", "ROLE", "STATUS", "RAFT", "HTTP", "TAGS")
    return table(headers, rows)


# ---- agent ----------------------------------------------------------------------


def run_agent(flags: dict[str, object]) -> int:
    flags.pop("command", None)
    try:
        settings = config.resolve(flags)
        config.check_data_dir(settings.data_dir)
    except ConfigError as exc:
        print(f"dcron: {exc.message}", file=sys.stderr)
        return EXIT_USAGE

    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    # pysyncobj logs every dropped connection at WARNING; its own state
    # changes reach our log through the node.
    logging.getLogger("pysyncobj").setLevel(logging.ERROR)
    prepare_job_environment()

    from dcron.node import serve

    try:
        return asyncio.run(serve(settings))
    except OSError as exc:
        print(f"dcron: --http-addr: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED


def prepare_job_environment() -> None:
    """Keep the one-file executable's loader settings out of jobs' environment.

    Jobs start with the node's environment (the node itself takes systemd's
    notify socket out of it). PyInstaller's bootloader adds its own variables;
    its ``LD_LIBRARY_PATH`` points at the bundled OpenSSL, SQLite and zlib, and
    a job's own programs must load the host's. The dynamic loader read it when
    this process started, so changing it now only affects the processes
    started from here on.
    """
    if not getattr(sys, "frozen", False):
        return
    original = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is None:
        os.environ.pop("LD_LIBRARY_PATH", None)
    else:
        os.environ["LD_LIBRARY_PATH"] = original
    for name in [name for name in os.environ if name.startswith("_PYI_")]:
        del os.environ[name]
