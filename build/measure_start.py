"""Measure how fast a dcron executable starts: exec to the first answered /health.

    python build/measure_start.py [--runs N] [COMMAND ...]

COMMAND defaults to ``dist/dcron``; give several (each one quoted string, such
as ``".venv/bin/python dcron.py"``) to compare them: their runs alternate, so a
busy machine slows them alike. Each run starts ``COMMAND agent --server`` with
a fresh data dir on free loopback ports, polls ``GET /health`` every
millisecond until it answers 200, then stops the node with SIGTERM. The numbers
in docs/install.md come from this script.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

POLL_S = 0.001
TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def time_to_health(command: list[str]) -> float:
    """Seconds from exec to the first 200 answer of /health, for one start."""
    http_port, raft_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        args = [
            *command,
            "agent",
            "--server",
            "--data-dir",
            data_dir,
            "--http-addr",
            f"127.0.0.1:{http_port}",
            "--raft-addr",
            f"127.0.0.1:{raft_port}",
            "--log-level",
            "error",
        ]
        url = f"http://127.0.0.1:{http_port}/health"
        started = time.perf_counter()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        try:
            while time.perf_counter() - started < TIMEOUT_S:
                try:
                    with urllib.request.urlopen(url, timeout=1) as response:
                        if response.status == 200:
                            return time.perf_counter() - started
                except (urllib.error.URLError, OSError):
                    pass
                if proc.poll() is not None:
                    raise SystemExit(f"{command[0]} exited with {proc.returncode}")
                time.sleep(POLL_S)
            raise SystemExit(f"no answer from {url} within {TIMEOUT_S:.0f}s")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("commands", nargs="*", default=["dist/dcron"])
    args = parser.parse_args()

    commands = [shlex.split(text) for text in args.commands]
    samples: dict[str, list[float]] = {text: [] for text in args.commands}
    for command in commands:
        time_to_health(command)  # warm the page cache, as a real host would be
    for _ in range(args.runs):
        for text, command in zip(args.commands, commands, strict=True):
            samples[text].append(time_to_health(command))

    for text, command in zip(args.commands, commands, strict=True):
        times = samples[text]
        size = ""
        if len(command) == 1 and os.path.isfile(command[0]):
            size = f", file size {os.path.getsize(command[0]) / 1e6:.1f} MB"
        sys.stdout.write(
            f"{text}: exec to /health median {1000 * statistics.median(times):.0f} "
            f"ms, min {1000 * min(times):.0f} ms, max {1000 * max(times):.0f} ms "
            f"over {args.runs} runs{size}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
