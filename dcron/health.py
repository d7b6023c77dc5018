"""Member health: which nodes answered lately.

Every node asks every other member for ``GET /health`` once per round. What it
learns decides where runs go (only to members that answered within the
heartbeat timeout) and, on the leader, which open runs are lost: a node that
has not answered for the whole timeout is taken for dead, and its runs are
closed through a committed command, never by a node on its own.

The answers are this node's own view and are not replicated. A node that just
started, or just became leader, counts every member as seen at that moment,
so nobody is declared dead before a full timeout has passed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.httpclient import AsyncHTTPClient
from tornado.ioloop import IOLoop, PeriodicCallback

logger = logging.getLogger(__name__)

ROUND_PERIOD_S = 1.0
PROBE_TIMEOUT_S = 1.0

Members = Callable[[], list[dict[str, Any]]]
OnRound = Callable[[], Awaitable[None]]


class HealthMonitor:
    """Probes the other members each round and remembers when each answered."""

    def __init__(self, self_name: str, members: Members, on_round: OnRound) -> None:
        self.self_name = self_name
        self.members = members
        self.on_round = on_round
        self._seen: dict[str, float] = {}
        self._answers: dict[str, dict[str, Any]] = {}
        self._started_at = time.time()
        self._callback: PeriodicCallback | None = None
        self._busy = False
        self.rounds = 0

    def start(self) -> None:
        if self._callback is not None:
            return
        self._started_at = time.time()
        self._callback = PeriodicCallback(self._round, ROUND_PERIOD_S * 1000)
        self._callback.start()
        IOLoop.current().add_callback(self._round)

    def stop(self) -> None:
        if self._callback is not None:
            self._callback.stop()
            self._callback = None

    def restart_grace(self) -> None:
        """Count every member as seen now (this node just became leader)."""
        now = time.time()
        for member in self.members():
            self._seen[member["name"]] = max(self._seen.get(member["name"], 0), now)

    def seen_within(self, name: str, timeout: float, announced: float = 0.0) -> bool:
        """Whether ``name`` answered in the last ``timeout`` seconds.

        ``announced`` is when the member last announced itself through the
        log; a member that just did counts as seen even before the first probe.
        """
        seen = max(self._seen.get(name, self._started_at), announced)
        return time.time() - seen <= timeout

    def last_answer(self, name: str) -> dict[str, Any] | None:
        return self._answers.get(name)

    async def _round(self) -> None:
        # A round that outlasts the period must not overlap the next one.
        if self._busy:
            return
        self._busy = True
        try:
            others = [
                m
                for m in self.members()
                if m["name"] != self.self_name and not m["left"] and m["http_addr"]
            ]
            answers = await asyncio.gather(*(self._probe(m) for m in others))
            now = time.time()
            for member, answer in zip(others, answers, strict=True):
                if answer is not None:
                    self._seen[member["name"]] = now
                    self._answers[member["name"]] = answer
            self.rounds += 1
            await self.on_round()
        except Exception:
            logger.exception("health round failed")
        finally:
            self._busy = False

    async def _probe(self, member: dict[str, Any]) -> dict[str, Any] | None:
        try:
            response = await AsyncHTTPClient().fetch(
                f"http://{member['http_addr']}/health",
                request_timeout=PROBE_TIMEOUT_S,
            )
            return dict(json.loads(response.body))
        except Exception:
            return None
