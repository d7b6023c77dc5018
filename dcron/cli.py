"""The ``dcron`` command line: ``agent`` runs a node, ``version`` prints the version.

A bad setting ends the process with exit status 2 and one line naming the flag,
before anything is started.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from dcron import __version__, config
from dcron.errors import ConfigError

EXIT_USAGE = 2
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"dcron {__version__}")
        return 0
    if args.command == "agent":
        return run_agent(vars(args))
    parser.print_help()
    return EXIT_USAGE


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
        asyncio.run(serve(settings))
    except OSError as exc:
        print(f"dcron: --http-addr: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
