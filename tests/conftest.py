"""Real dcron nodes for the tests: processes on loopback ports, driven over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05
) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class Response:
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:300]!r}>"


class Client:
    """A small HTTP client for one node."""

    def __init__(self, base: str) -> None:
        self.base = base

    def request(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None
    ) -> Response:
        data = (
            raw
            if raw is not None
            else (None if body is None else json.dumps(body).encode())
        )
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Response(
                    response.status, response.read(), dict(response.headers)
                )
        except urllib.error.HTTPError as error:
            return Response(error.code, error.read(), dict(error.headers))

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None, raw: bytes | None = None) -> Response:
        return self.request("POST", path, body, raw)

    def put(self, path: str, body: Any = None, raw: bytes | None = None) -> Response:
        return self.request("PUT", path, body, raw)

    def delete(self, path: str) -> Response:
        return self.request("DELETE", path)

    def executions(self, name: str) -> list[dict[str, Any]]:
        response = self.get(f"/jobs/{name}/executions")
        assert response.status == 200, response
        return response.json

    def finished(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.executions(name) if e["finished_at"] is not None]


class NodeProcess:
    """One ``dcron agent`` process with its own data dir and ports."""

    def __init__(
        self, data_dir: Path, name: str = "n1", *extra: str, server: bool = True
    ) -> None:
        self.data_dir = data_dir
        self.name = name
        self.server = server
        self.extra = list(extra)
        self.http_port = free_port()
        self.raft_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{name}.log"
        self.client = Client(f"http://127.0.0.1:{self.http_port}")

    def args(self) -> list[str]:
        return [
            sys.executable,
            str(ROOT / "dcron.py"),
            "agent",
            *(["--server"] if self.server else []),
            "--node-name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--http-addr",
            f"127.0.0.1:{self.http_port}",
            "--raft-addr",
            f"127.0.0.1:{self.raft_port}",
            *self.extra,
        ]

    def start(self, wait: bool = True) -> NodeProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                info = self.client.get("/").json
            except (OSError, ValueError):
                return False
            if not info["ready"] or info["leader"] is None:
                return False
            return info["leader"] != self.name or info["scheduler"]["running"]

        wait_until(ready, START_TIMEOUT_S)

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def info(self) -> dict[str, Any]:
        return self.client.get("/").json

    @property
    def raft_addr(self) -> str:
        return f"127.0.0.1:{self.raft_port}"


class Cluster:
    """Servers that bootstrap together, each naming the others with --join."""

    def __init__(self, base: Path, size: int = 3, *extra: str) -> None:
        self.base = base
        self.nodes = [
            NodeProcess(base / f"n{i}.data", f"n{i}") for i in range(1, size + 1)
        ]
        for node in self.nodes:
            joins = [
                arg
                for other in self.nodes
                if other is not node
                for arg in ("--join", other.raft_addr)
            ]
            expect = ["--bootstrap-expect", str(size)] if size > 1 else []
            node.extra = [*joins, *expect, *extra]
        # Agents share the cluster's settings but not the servers' tags.
        self.extra_shared = [
            arg
            for i, arg in enumerate(extra)
            if arg != "--tag" and (i == 0 or extra[i - 1] != "--tag")
        ]

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready()
        return self

    def add_agent(self, name: str, *extra: str) -> NodeProcess:
        """Start an agent that joins through the first server."""
        agent = NodeProcess(
            self.base / f"{name}.data",
            name,
            "--join",
            self.nodes[0].raft_addr,
            *self.extra_shared,
            *extra,
            server=False,
        )
        self.nodes.append(agent)
        return agent.start()

    def servers(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.server]

    def node(self, name: str) -> NodeProcess:
        return next(n for n in self.nodes if n.name == name)

    def leader(self, timeout: float = 15.0) -> NodeProcess:
        """The node every running member names as leader."""

        def agreed() -> NodeProcess | None:
            names = set()
            for node in self.running():
                try:
                    names.add(node.info()["leader"])
                except (OSError, ValueError):
                    return None
            if len(names) != 1 or None in names:
                return None
            leader = self.node(names.pop())
            return leader if leader.running() else None

        return wait_until(agreed, timeout)

    def followers(self) -> list[NodeProcess]:
        leader = self.leader()
        return [n for n in self.running() if n is not leader and n.server]

    def running(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.running()]

    def kill_all(self) -> None:
        for node in self.nodes:
            if node.running():
                node.kill()


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Start nodes on demand; every one still running is killed afterwards."""
    nodes: list[NodeProcess] = []

    def make(*extra: str, name: str = "n1", start: bool = True) -> NodeProcess:
        node = NodeProcess(tmp_path / f"{name}.data", name, *extra)
        nodes.append(node)
        return node.start() if start else node

    yield make
    for node in nodes:
        if node.running():
            node.kill()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Start clusters on demand; every node still running is killed afterwards."""
    clusters: list[Cluster] = []

    def make(size: int = 3, *extra: str, start: bool = True) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(clusters)}", size, *extra)
        clusters.append(cluster)
        return cluster.start() if start else cluster

    yield make
    for cluster in clusters:
        cluster.kill_all()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node shared by a module's tests; each test uses its own job names."""
    base = tmp_path_factory.mktemp("node")
    node = NodeProcess(
        base / "n1.data",
        "n1",
        "--executions-per-job",
        "5",
        "--output-keep-bytes",
        "2048",
        "--retry-backoff",
        "0.2",
    )
    node.start()
    yield node
    if node.running():
        node.kill()


@pytest.fixture
def client(node: NodeProcess) -> Client:
    return node.client


def job(name: str, **fields: Any) -> dict[str, Any]:
    """A job body with a schedule that never fires on its own by default."""
    body: dict[str, Any] = {"name": name, "schedule": "@manually"}
    if "command" not in (fields.get("executor_config") or {}):
        body["command"] = "true"
    body.update(fields)
    return body
