"""One table of node settings, read from flags, environment and a TOML file.

Each setting has one name. It is the flag (``--http-addr``), the environment
variable (``DCRON_HTTP_ADDR``) and the config file key (``http_addr``). A flag
beats the environment, which beats the file, which beats the default. The same
table produces ``--help`` and the settings reference in docs/settings.md, so
the three can never disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dcron.errors import ConfigError

ENV_PREFIX = "DCRON_"
LOG_LEVELS = ("debug", "info", "warning", "error")
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TAG_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_address(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT``; port 0 asks the system for a free port."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range (0-65535)")
    return host, port


def parse_peer_address(text: str) -> str:
    host, port = parse_address(text)
    if port == 0:
        raise ValueError("a peer's port cannot be 0")
    return f"{host}:{port}"


def parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not TAG_KEY_RE.match(key):
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key, value.strip()


def parse_node_name(text: str) -> str:
    if not NODE_NAME_RE.match(text):
        raise ValueError(
            "use 1-128 letters, digits, '.', '-' or '_', starting with a letter "
            "or digit"
        )
    return text


def parse_positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def parse_count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return value


def parse_seconds(text: str) -> float:
    """Seconds as a number (``2.5``) or a duration (``1m30s``)."""
    from dcron.schedule import parse_duration

    try:
        seconds = float(text)
    except ValueError:
        seconds = parse_duration(text).total_seconds()
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def parse_key(text: str) -> str:
    key = text.strip()
    if key and len(key) < 16:
        raise ValueError("use at least 16 characters (dcron keygen prints one)")
    return key


def parse_log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return level


@dataclass(frozen=True)
class Setting:
    """One setting: its name, meaning, default and how to read it from text."""

    name: str
    help: str
    default: Any
    parse: Callable[[str], Any]
    metavar: str = ""
    repeatable: bool = False
    is_flag: bool = False

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.attr.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "server",
        "run as a server: vote in raft and serve the API",
        False,
        parse_bool,
        is_flag=True,
    ),
    Setting(
        "node-name",
        "this node's unique name (default: the host name)",
        "",
        parse_node_name,
        "NAME",
    ),
    Setting(
        "data-dir",
        "directory for the store and the raft journal",
        "dcron.data",
        str,
        "DIR",
    ),
    Setting(
        "http-addr",
        "address the HTTP API listens on",
        ("0.0.0.0", 8080),
        parse_address,
        "HOST:PORT",
    ),
    Setting(
        "raft-addr",
        "address for raft traffic between servers",
        ("127.0.0.1", 6868),
        parse_address,
        "HOST:PORT",
    ),
    Setting(
        "join",
        "raft address of another server (repeatable)",
        (),
        parse_peer_address,
        "HOST:PORT",
        repeatable=True,
    ),
    Setting(
        "bootstrap-expect",
        "number of servers expected to form the cluster",
        0,
        parse_count,
        "N",
    ),
    Setting(
        "tag",
        "a node tag that jobs can target (repeatable)",
        (),
        parse_tag,
        "KEY=VALUE",
        repeatable=True,
    ),
    Setting(
        "log-level",
        "one of debug, info, warning, error",
        "info",
        parse_log_level,
        "LEVEL",
    ),
    Setting(
        "executions-per-job",
        "executions kept per job; the oldest go first",
        100,
        parse_positive_int,
        "N",
    ),
    Setting(
        "output-keep-bytes",
        "bytes of output kept at each end of a run",
        64 * 1024,
        parse_positive_int,
        "BYTES",
    ),
    Setting(
        "shutdown-grace",
        "seconds running jobs get to finish on shutdown",
        10.0,
        parse_seconds,
        "SECONDS",
    ),
    Setting(
        "retry-backoff",
        "delay before the first retry; doubles each attempt",
        1.0,
        parse_seconds,
        "SECONDS",
    ),
    Setting(
        "max-body-bytes",
        "largest request body the API accepts",
        1024 * 1024,
        parse_positive_int,
        "BYTES",
    ),
    Setting(
        "max-pending-commands",
        "commands waiting for raft before new writes get 503",
        10000,
        parse_positive_int,
        "N",
    ),
    Setting(
        "heartbeat-timeout",
        "seconds without an answer before a node is taken for dead and its "
        "runs are closed as lost",
        10.0,
        parse_seconds,
        "SECONDS",
    ),
    Setting(
        "max-restore-bytes",
        "largest backup file POST /restore accepts",
        1024 * 1024 * 1024,
        parse_positive_int,
        "BYTES",
    ),
    Setting(
        "encrypt",
        "key that encrypts and authenticates raft traffic (see dcron keygen)",
        "",
        parse_key,
        "KEY",
    ),
    Setting(
        "raft-compaction-entries",
        "raft log entries kept before a snapshot replaces them",
        20000,
        parse_positive_int,
        "N",
    ),
    Setting(
        "store-max-bytes",
        "largest size of the SQLite store; a node that hits it stops (0: no cap)",
        0,
        parse_count,
        "BYTES",
    ),
)

BY_NAME = {setting.name: setting for setting in SETTINGS}


@dataclass(frozen=True)
class Config:
    """The resolved settings of one node."""

    server: bool
    node_name: str
    data_dir: str
    http_addr: tuple[str, int]
    raft_addr: tuple[str, int]
    join: tuple[str, ...]
    bootstrap_expect: int
    tag: tuple[tuple[str, str], ...]
    log_level: str
    executions_per_job: int
    output_keep_bytes: int
    shutdown_grace: float
    retry_backoff: float
    max_body_bytes: int
    max_pending_commands: int
    heartbeat_timeout: float
    max_restore_bytes: int
    encrypt: str
    raft_compaction_entries: int
    store_max_bytes: int

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.tag)

    @property
    def raft_address(self) -> str:
        return "{}:{}".format(*self.raft_addr)

    @property
    def http_address(self) -> str:
        return "{}:{}".format(*self.http_addr)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare every setting as a flag; unset flags stay out of the namespace."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file with settings (keys as below, with '_' for '-')",
        default=argparse.SUPPRESS,
    )
    for setting in SETTINGS:
        help_text = f"{setting.help} [env {setting.env}; default: {_show(setting)}]"
        if setting.is_flag:
            parser.add_argument(
                f"--{setting.name}",
                action="store_const",
                const="true",
                help=help_text,
                default=argparse.SUPPRESS,
            )
        elif setting.repeatable:
            parser.add_argument(
                f"--{setting.name}",
                action="append",
                metavar=setting.metavar,
                help=help_text,
                default=argparse.SUPPRESS,
            )
        else:
            parser.add_argument(
                f"--{setting.name}",
                metavar=setting.metavar,
                help=help_text,
                default=argparse.SUPPRESS,
            )


def _show(setting: Setting) -> str:
    if setting.name == "node-name":
        return "host name"
    if setting.repeatable or setting.default == "":
        return "none"
    if isinstance(setting.default, tuple):
        return "{}:{}".format(*setting.default)
    return str(setting.default).lower() if setting.is_flag else str(setting.default)


def resolve(
    flags: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Config:
    """Merge flags, environment, config file and defaults into a Config.

    Raises ConfigError naming the flag of the first bad value.
    """
    environ = os.environ if environ is None else environ
    file_values = _read_file(flags.get("config") or environ.get(ENV_PREFIX + "CONFIG"))

    values: dict[str, Any] = {}
    for setting in SETTINGS:
        values[setting.attr] = _resolve_one(setting, flags, environ, file_values)
    if not values["node_name"]:
        values["node_name"] = _default_node_name()

    known = {s.attr for s in SETTINGS} | {
        s.attr + "s" for s in SETTINGS if s.repeatable
    }
    unknown = set(file_values) - known
    if unknown:
        raise ConfigError(f"--config: unknown setting {sorted(unknown)[0]!r}")
    return Config(**values)


def _resolve_one(
    setting: Setting,
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    file_values: Mapping[str, Any],
) -> Any:
    if setting.attr in flags:
        raw: Any = flags[setting.attr]
    elif setting.env in environ:
        raw = environ[setting.env]
        if setting.repeatable:
            raw = [part for part in raw.split(",") if part.strip()]
    elif setting.attr in file_values or setting.attr + "s" in file_values:
        raw = file_values.get(setting.attr, file_values.get(setting.attr + "s"))
        raw = _from_toml(setting, raw)
    else:
        return setting.default

    try:
        if setting.repeatable:
            items = raw if isinstance(raw, list | tuple) else [raw]
            return tuple(setting.parse(str(item)) for item in items)
        return setting.parse(str(raw))
    except ValueError as exc:
        raise ConfigError(f"--{setting.name}: {exc}") from exc


def _from_toml(setting: Setting, raw: Any) -> Any:
    """TOML gives typed values; turn them back into the text the parsers take."""
    if setting.name == "tag" and isinstance(raw, dict):
        return [f"{key}={value}" for key, value in raw.items()]
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return raw


def _read_file(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from exc
    return {key.replace("-", "_"): value for key, value in data.items()}


def _default_node_name() -> str:
    name = socket.gethostname().split(".")[0] or "dcron"
    return name if NODE_NAME_RE.match(name) else "dcron"


def check_data_dir(path: str) -> str:
    """Create the data dir if needed and prove it is writable."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write-probe")
        with open(probe, "w") as handle:
            handle.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(
            f"--data-dir: {path} is not writable: {exc.strerror}"
        ) from exc
    return os.path.abspath(path)


SETTINGS_PAGE_INTRO = """# Settings

Every setting of a node, generated from the table in `dcron/config.py`; a test
fails when this page and the table disagree. Regenerate it with
`python -m dcron.config > docs/settings.md`.

A flag beats the environment, which beats the TOML file given by `--config`,
which beats the default. Repeatable settings take a comma-separated list in the
environment and a TOML array in the file; `tag` also takes a TOML table
(`tags = { role = "web" }`). Durations take seconds (`2.5`) or Go durations
(`1m30s`).

"""


def settings_page() -> str:
    """docs/settings.md, generated from SETTINGS."""
    return SETTINGS_PAGE_INTRO + reference_markdown()


def reference_markdown() -> str:
    """The settings reference for docs/settings.md, generated from SETTINGS."""
    lines = [
        "| flag | environment | file key | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for setting in SETTINGS:
        lines.append(
            f"| `--{setting.name}` | `{setting.env}` | `{setting.attr}` "
            f"| {_show(setting)} | {setting.help} |"
        )
    return "\n".join(lines) + "\n"


SAMPLE_TOML_INTRO = """\
# dcron settings: /etc/dcron/dcron.toml, read by the packaged service
# (build/dcron.service runs `dcron agent --config /etc/dcron/dcron.toml`).
#
# Every setting of a node is below with its default. A line "# key = value"
# shows the default; remove the "# " to change it. Each setting is also a flag
# and a DCRON_* environment variable: a flag beats the environment, which beats
# this file, which beats the default. Durations take seconds (2.5) or Go
# durations ("1m30s"). The full reference is docs/settings.md.
#
# Once it holds the raft key (encrypt), keep this file from other users:
#   chown root:dcron /etc/dcron/dcron.toml && chmod 640 /etc/dcron/dcron.toml
#
# Generated from the settings table in dcron/config.py; a test fails when the
# two disagree. Regenerate it with:
#   python -c 'import dcron.config as c; print(c.sample_toml(), end="")' \\
#     > build/dcron.toml
"""

# What the packaged service sets: its data lives in systemd's StateDirectory.
SERVICE_SETTINGS: dict[str, Any] = {"data_dir": "/var/lib/dcron"}


def sample_toml(active: Mapping[str, Any] = SERVICE_SETTINGS) -> str:
    """build/dcron.toml: every setting with its default, generated from SETTINGS.

    Defaults are commented out; the keys in ``active`` are set to their value.
    """
    blocks = [SAMPLE_TOML_INTRO]
    for setting in SETTINGS:
        key = "tags" if setting.name == "tag" else setting.attr
        lines = [
            f"# {setting.help[0].upper()}{setting.help[1:]}.",
            f"# Flag --{setting.name}, environment {setting.env}; "
            f"default: {_show(setting)}.",
            f"# {key} = {_toml_default(setting)}",
        ]
        if setting.name == "tag":
            lines.insert(2, '# As a table: tags = { role = "web", zone = "a" }.')
        elif setting.repeatable:
            lines.insert(2, f'# As a list: {key} = ["{setting.metavar}", ...].')
        if setting.attr in active:
            lines.append(f"{key} = {_toml_value(active[setting.attr])}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def _toml_default(setting: Setting) -> str:
    if setting.name == "tag":
        return "{}"
    if setting.repeatable:
        return "[]"
    if isinstance(setting.default, tuple):
        return _toml_value("{}:{}".format(*setting.default))
    if setting.default == "":
        try:
            setting.parse("")
        except ValueError:
            # No text stands for this default (the host name): show the form.
            return _toml_value(setting.metavar)
    return _toml_value(setting.default)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # A JSON string is a TOML basic string for the text settings take.
    return json.dumps(str(value))


if __name__ == "__main__":
    import sys

    sys.stdout.write(settings_page())
