"""What every benchmark shares: real dcron nodes on loopback, HTTP clients,
the machine's own process-start limits, and the printed tables.

Nodes are started as a user would start them (``dcron.py agent --server``)
and driven only over HTTP on 127.0.0.1. Every process started here is killed
when the benchmark ends, however it ends: an ``atexit`` hook kills them, a
SIGTERM or SIGHUP is turned into a normal exit so that hook runs, and each
node asks the kernel to kill it if the benchmark itself dies (``PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import ctypes
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NODE_START_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 60.0
READ_ALL_TIMEOUT_S = 120.0
PR_SET_PDEATHSIG = 1

# The command every timed job runs: it appends its own name, its slot and the
# wall clock (ns) at the moment it runs to one file. ``exec`` lets dash become
# ``date`` instead of forking it, so the time is taken one exec after the shell
# started; one short write with O_APPEND keeps concurrent lines whole.
RECORD_COMMAND = 'exec date +"$DCRON_JOB_NAME $DCRON_SCHEDULED_AT %s%N" >>{path}'

_processes: list[subprocess.Popen[bytes]] = []
_workdirs: list[Path] = []


# ---- cleanup -----------------------------------------------------------------


def _kill_everything() -> None:
    for proc in _processes:
        if proc.poll() is None:
            try:
                proc.kill()
                proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
    _processes.clear()
    for path in _workdirs:
        shutil.rmtree(path, ignore_errors=True)
    _workdirs.clear()


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


atexit.register(_kill_everything)
signal.signal(signal.SIGTERM, _exit_on_signal)
signal.signal(signal.SIGHUP, _exit_on_signal)


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the benchmark is killed
    # outright, its nodes go with it.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(argv: Sequence[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a helper process that is killed when the benchmark ends."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            **kwargs,
        )
    _processes.append(proc)
    return proc


def workdir(keep: bool = False) -> Path:
    """A fresh directory for data dirs, logs and record files."""
    path = Path(tempfile.mkdtemp(prefix="dcron-bench-"))
    if not keep:
        _workdirs.append(path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- HTTP --------------------------------------------------------------------


def call(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One blocking request; returns the status and the decoded JSON body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw or b"null")
        except ValueError:
            return error.code, raw.decode(errors="replace")


class Unresponsive(Exception):
    """A node did not answer a request within HTTP_TIMEOUT_S."""


class Connection:
    """One keep-alive HTTP/1.1 connection, for many requests in a row."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: Any = None
    ) -> tuple[int, bytes]:
        """Send one request and return its status and raw body."""
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Length: {len(payload)}\r\n"
            "Content-Type: application/json\r\n\r\n"
        ).encode()
        for attempt in (1, 2):
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(
                    self.host, self.port
                )
            try:
                self._writer.write(head + payload)
                return await asyncio.wait_for(self._read_response(), HTTP_TIMEOUT_S)
            except (ConnectionError, asyncio.IncompleteReadError):
                # The server closed an idle connection: reconnect once.
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _read_response(self) -> tuple[int, bytes]:
        assert self._reader is not None
        status_line = await self._reader.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self._reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        body = await self._reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def run_requests(
    base: str,
    requests: Iterable[tuple[str, str, Any]],
    clients: int,
    results: list[tuple[int, float]] | None = None,
) -> list[tuple[int, float]]:
    """Send every request from ``clients`` connections at once.

    Returns (status, latency in seconds) in completion order, also appended
    to ``results`` as they come, so a caller still has them after a timeout.
    """
    host, _, port = base.removeprefix("http://").partition(":")
    queue = iter(requests)
    if results is None:
        results = []

    async def worker() -> None:
        connection = Connection(host, int(port))
        try:
            for method, path, body in queue:
                began = time.perf_counter()
                status, _ = await connection.request(method, path, body)
                results.append((status, time.perf_counter() - began))
        finally:
            connection.close()

    await asyncio.gather(*(worker() for _ in range(clients)))
    return results


# ---- nodes -------------------------------------------------------------------


class Node:
    """One ``dcron.py agent --server`` process with its own data dir and ports."""

    def __init__(self, base: Path, name: str, extra: Sequence[str] = ()) -> None:
        self.base = base
        self.name = name
        self.data_dir = base / f"{name}.data"
        self.log_path = base / f"{name}.log"
        self.http_port = free_port()
        self.raft_port = free_port()
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def raft_addr(self) -> str:
        return f"127.0.0.1:{self.raft_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def argv(self) -> list[str]:
        return [
            sys.executable,
            str(ROOT / "dcron.py"),
            "agent",
            "--server",
            "--node-name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--http-addr",
            f"127.0.0.1:{self.http_port}",
            "--raft-addr",
            self.raft_addr,
            *self.extra,
        ]

    def start(self, wait: bool = True) -> Node:
        self.proc = spawn(
            self.argv(),
            self.log_path,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if wait:
            self.wait_ready()
        return self

    def info(self) -> dict[str, Any] | None:
        try:
            status, body = call(self.url, "GET", "/")
        except OSError:
            return None
        return body if status == 200 else None

    def ready(self) -> bool:
        """Caught up, a leader known, and if it leads, its scheduler running."""
        info = self.info()
        if not info or not info["ready"] or info["leader"] is None:
            return False
        return info["leader"] != self.name or info["scheduler"]["running"]

    def wait_ready(self, timeout: float = NODE_START_TIMEOUT_S) -> float:
        """Wait until ready(); return the seconds waited."""
        began = time.monotonic()
        wait_until(self.ready, timeout, f"node {self.name} ready", self)
        return time.monotonic() - began

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 60.0) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def memory(self) -> Memory:
        """The node's memory with its process spawner's (dcron.spawnd)."""
        helpers = children(self.pid)
        return Memory(
            node_rss=rss_bytes(self.pid),
            spawner_rss=sum(map(rss_bytes, helpers)),
            pss=sum(map(pss_bytes, [self.pid, *helpers])),
        )

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Cluster:
    """``size`` servers that bootstrap together (size 1 is a single node)."""

    def __init__(self, base: Path, size: int, extra: Sequence[str] = ()) -> None:
        self.nodes = [Node(base, f"n{i}") for i in range(1, size + 1)]
        if size > 1:
            for node in self.nodes:
                joins = [
                    arg
                    for other in self.nodes
                    if other is not node
                    for arg in ("--join", other.raft_addr)
                ]
                node.extra = [*joins, "--bootstrap-expect", str(size)]
        for node in self.nodes:
            node.extra += list(extra)

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready()
        return self

    @property
    def url(self) -> str:
        """The first running node's address; writes work through any node."""
        return next(n for n in self.nodes if n.running()).url

    def leader(self) -> Node | None:
        for node in self.nodes:
            if not node.running():
                continue
            info = node.info()
            if info and info["leader"]:
                return next((n for n in self.nodes if n.name == info["leader"]), None)
        return None

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    node: Node | None = None,
    interval: float = 0.05,
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if node is not None and not node.running():
            raise RuntimeError(f"{what}: node exited\n{node.log_tail()}")
        if time.monotonic() > deadline:
            tail = node.log_tail() if node is not None else ""
            raise RuntimeError(f"{what}: not within {timeout:.0f}s\n{tail}")
        time.sleep(interval)


def create_jobs(
    base: str,
    bodies: Sequence[dict[str, Any]],
    clients: int = 32,
    budget_s: float | None = None,
) -> float:
    """Create every job through the API; return the seconds it took.

    Raises Unresponsive when one create gets no answer within HTTP_TIMEOUT_S,
    or all of them take longer than ``budget_s``.
    """
    began = time.monotonic()
    results: list[tuple[int, float]] = []
    requests = run_requests(
        base, (("POST", "/jobs", body) for body in bodies), clients, results
    )
    try:
        asyncio.run(asyncio.wait_for(requests, budget_s))
    except (TimeoutError, OSError) as exc:
        created = sum(1 for status, _ in results if status == 201)
        raise Unresponsive(
            f"{created} of {len(bodies)} jobs created in "
            f"{time.monotonic() - began:.0f} s (at most {HTTP_TIMEOUT_S:.0f} s a "
            f"create, {budget_s or 0:.0f} s in all)"
        ) from exc
    refused = [status for status, _ in results if status != 201]
    if refused:
        raise RuntimeError(
            f"{len(refused)} of {len(bodies)} job creates refused, e.g. {refused[:5]}"
        )
    return time.monotonic() - began


def executions(base: str, names: Sequence[str], clients: int = 8) -> dict[str, list]:
    """Every stored execution of each job, newest first, via the API."""
    out: dict[str, list] = {}
    host, _, port = base.removeprefix("http://").partition(":")
    queue = iter(names)

    async def worker() -> None:
        connection = Connection(host, int(port))
        try:
            for name in queue:
                status, body = await connection.request(
                    "GET", f"/jobs/{name}/executions?output_size_limit=0"
                )
                out[name] = json.loads(body) if status == 200 else []
        finally:
            connection.close()

    async def main() -> None:
        # An overloaded node may answer each request in time and still take
        # for ever over all of them: bound the whole read.
        await asyncio.wait_for(
            asyncio.gather(*(worker() for _ in range(clients))), READ_ALL_TIMEOUT_S
        )

    asyncio.run(main())
    return out


@dataclass(frozen=True)
class Memory:
    node_rss: int
    spawner_rss: int
    # Proportional set size of both: a page they share counts once in all.
    pss: int


def rss_bytes(pid: int) -> int:
    return _proc_kib(f"/proc/{pid}/status", "VmRSS:")


def pss_bytes(pid: int) -> int:
    return _proc_kib(f"/proc/{pid}/smaps_rollup", "Pss:")


def _proc_kib(path: str, key: str) -> int:
    with open(path) as lines:
        for line in lines:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def children(pid: int) -> list[int]:
    """The processes ``pid`` started that still run: a node's is its spawner."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += map(int, (task / "children").read_text().split())
    return found


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---- the machine's own limits ------------------------------------------------


def spawn_limit(burst: int, rounds: int = 5) -> list[float]:
    """limit(k): seconds from a burst's start until the k-th ``/bin/sh -c true``
    started, spawning back to back from Python (median over ``rounds``).

    ``Popen`` returns once the child has exec'd, so each time is the moment
    that process was running. Index 0 is k = 1.
    """
    samples: list[list[float]] = []
    for _ in range(rounds):
        started: list[float] = []
        procs = []
        began = time.perf_counter()
        for _ in range(burst):
            procs.append(subprocess.Popen(["/bin/sh", "-c", "true"]))
            started.append(time.perf_counter() - began)
        for proc in procs:
            proc.wait()
        samples.append(started)
        time.sleep(0.2)
    return [statistics.median(s[k] for s in samples) for k in range(burst)]


def gated_limit(burst: int, rounds: int = 3) -> list[float]:
    """Like spawn_limit, but the shells are spawned ahead and held at a gate.

    Each ``/bin/sh`` blocks reading a pipe; at the instant the pipe's write
    end is closed they all see end of file and run RECORD_COMMAND. Returns the
    k-th command's lateness after the release (median over ``rounds``): what
    a scheduler that spawns ahead of the slot could reach.
    """
    samples: list[list[float]] = []
    base = workdir()
    for round_ in range(rounds):
        path = base / f"gate{round_}.log"
        read_end, write_end = os.pipe()
        procs = []
        for _ in range(burst):
            procs.append(
                subprocess.Popen(
                    ["/bin/sh", "-c", "read _; " + record_command(path)],
                    stdin=read_end,
                    env={**os.environ, "DCRON_JOB_NAME": "gate"},
                )
            )
        os.close(read_end)
        time.sleep(0.3)  # every shell is up and blocked in read

        slot = time.time()
        os.close(write_end)
        for proc in procs:
            proc.wait()
        # The slot is not in the line (the env was fixed at spawn): use the
        # time stamp alone.
        started = sorted(
            int(line.split()[-1]) / 1e9 - slot for line in path.read_text().splitlines()
        )
        samples.append(started)
    return [statistics.median(s[k] for s in samples) for k in range(burst)]


def raw_spawn_rate(seconds: float) -> float:
    """Processes of ``/bin/sh -c true`` started (and reaped) per second, back
    to back from one Python thread: the machine's physical limit for us."""
    live: list[subprocess.Popen[bytes]] = []
    count = 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        live.append(subprocess.Popen(["/bin/sh", "-c", "true"]))
        count += 1
        if len(live) >= 32:
            live = [p for p in live if p.poll() is None]
    for proc in live:
        proc.wait()
    return count / (time.perf_counter() - began)


def asyncio_spawn_rate(seconds: float, concurrency: int = 64) -> float:
    """The same from asyncio (create_subprocess_exec, then wait), which is how
    dcron and the APScheduler runner start commands."""

    async def main() -> float:
        count = 0
        began = time.perf_counter()

        async def worker() -> None:
            nonlocal count
            while time.perf_counter() - began < seconds:
                proc = await asyncio.create_subprocess_exec(
                    "/bin/sh", "-c", "true", stdin=subprocess.DEVNULL
                )
                await proc.wait()
                count += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - began)

    return asyncio.run(main())


# ---- records written by the timed command -----------------------------------


@dataclass
class Run:
    job: str
    slot: float  # the scheduled instant, seconds since the epoch
    started: float  # what the command itself recorded

    @property
    def lateness(self) -> float:
        return self.started - self.slot


def read_records(path: Path) -> list[Run]:
    """Parse the lines RECORD_COMMAND appended; skip a torn line, if any."""
    runs = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or not parts[2].isdigit():
            continue
        slot = datetime.fromisoformat(parts[1].replace("Z", "+00:00")).timestamp()
        runs.append(Run(parts[0], slot, int(parts[2]) / 1e9))
    return runs


def record_command(path: Path) -> str:
    return RECORD_COMMAND.format(path=path)


# ---- numbers and tables ------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "-"
    return f"{seconds * 1000:.1f}"


def print_table(
    title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """A Markdown table, so results paste straight into docs/benchmarks.md."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    sys.stdout.flush()


@dataclass
class Machine:
    """Where and when the figures were taken; printed above every table."""

    started: float = field(default_factory=time.time)

    def describe(self) -> str:
        model = "unknown cpu"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        return (
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cpus ({model}); "
            f"{platform.system()} {platform.release()}; Python "
            f"{platform.python_version()}; dcron {git_commit()}; load avg {load}"
        )


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run in under a minute"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep data dirs and logs in /tmp"
    )
    return parser


def header(name: str) -> None:
    print(f"## {name}\n\n{Machine().describe()}")
    sys.stdout.flush()


def footer() -> None:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nload avg at the end: {load}")
