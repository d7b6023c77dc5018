"""The ``dcron`` command line: ``agent`` runs a node; the other verbs are tools
(``version``, ``keygen``) or clients of a running node (``leave``, ``members``).

A bad setting ends the process with exit status 2 and one line naming the flag,
before anything is started.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import secrets
import sys

from dcron import __version__, client, config
from dcron.errors import ConfigError

EXIT_USAGE = 2
EXIT_FAILED = 1
KEY_BYTES = 32
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcron",
        description="dcron: a distributed cron on a Raft-replicated SQLite store.",
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
    leave = commands.add_parser(
        "leave", help="make the node at --address leave its cluster and stop"
    )
    _add_address(leave)
    members = commands.add_parser("members", help="list or remove cluster members")
    _add_address(members)
    member_commands = members.add_subparsers(dest="members_command", metavar="ACTION")
    remove = member_commands.add_parser(
        "remove", help="remove a member that is gone for good"
    )
    remove.add_argument("name", help="the member's node name")
    return parser


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=client.DEFAULT_ADDRESS,
        help=f"the node's HTTP address (default: {client.DEFAULT_ADDRESS})",
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"dcron {__version__}")
        return 0
    if args.command == "agent":
        return run_agent(vars(args))
    if args.command == "keygen":
        print(base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode())
        return 0
    if args.command in ("leave", "members"):
        return run_client_verb(args)
    parser.print_help()
    return EXIT_USAGE


def run_client_verb(args: argparse.Namespace) -> int:
    node = client.Client(args.address)
    try:
        if args.command == "leave":
            answer = node.call("POST", "/leave")
            print(f"{answer['leaving']} is leaving the cluster")
        elif getattr(args, "members_command", None) == "remove":
            answer = node.call("DELETE", f"/members/{args.name}")
            print(f"{answer['name']} removed")
        else:
            for member in node.call("GET", "/members"):
                print(
                    f"{member['name']:<20} {member['role']:<9} {member['status']:<7} "
                    f"{member['raft_addr']:<22} {member['http_addr']}"
                )
    except client.ClientError as exc:
        print(f"dcron: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    return 0


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

    from dcron.node import serve

    try:
        return asyncio.run(serve(settings))
    except OSError as exc:
        print(f"dcron: --http-addr: {exc.strerror or exc}", file=sys.stderr)
        return 1
