"""APScheduler 3 running dcron job bodies, for the side-by-side benchmark.

``python -m bench.apscheduler_runner JOBS.json FINISHED.log`` schedules every
job of JOBS.json (dcron bodies: name, schedule, command) on an
AsyncIOScheduler and runs each command the way dcron does, with ``/bin/sh -c``
from asyncio, ``DCRON_JOB_NAME`` and ``DCRON_SCHEDULED_AT`` in its
environment. Each finished run appends ``name slot exit_code`` to FINISHED.log.
It writes ``JOBS.json.ready`` once every job is scheduled and runs until
killed.

Settings are what a user after "every run, however late" would pick:
``misfire_grace_time=None`` and ``coalesce=False`` so no run is dropped, and a
high ``max_instances`` so runs of one job may overlap, as in dcron.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import os
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

MAX_INSTANCES = 1000
FLUSH_EVERY_S = 0.5

# The slot a run belongs to. APScheduler hands the slot to the executor, not
# to the job function; the executor below puts it here, and the task that runs
# the job copies the context when it is created.
scheduled_at: contextvars.ContextVar[datetime] = contextvars.ContextVar("slot")


class SlotExecutor(AsyncIOExecutor):
    """AsyncIOExecutor that submits each slot on its own, with the slot known."""

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        for run_time in run_times:
            token = scheduled_at.set(run_time)
            try:
                super()._do_submit_job(job, [run_time])
            finally:
                scheduled_at.reset(token)


def trigger_for(expression: str) -> Any:
    """dcron's ``@every Ns`` and 6-field cron, as APScheduler triggers in UTC."""
    if expression.startswith("@every "):
        seconds = int(expression.split()[1].removesuffix("s"))
        # dcron's @every slots are multiples of the interval since the epoch.
        start = math.ceil(datetime.now(UTC).timestamp() / seconds + 1) * seconds
        return IntervalTrigger(
            seconds=seconds, start_date=datetime.fromtimestamp(start, UTC)
        )
    second, minute, hour, day, month, weekday = expression.split()
    if weekday != "*":
        raise ValueError("day of week numbering differs between the two")
    return CronTrigger(
        second=second, minute=minute, hour=hour, day=day, month=month, timezone=UTC
    )


async def main(jobs_path: str, finished_path: str) -> None:
    bodies = json.loads(open(jobs_path).read())
    finished = open(finished_path, "a")

    async def run(name: str, command: str) -> None:
        slot = scheduled_at.get()
        env = {
            **os.environ,
            "DCRON_JOB_NAME": name,
            "DCRON_SCHEDULED_AT": slot.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        process = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, env=env, stdin=subprocess.DEVNULL
        )
        code = await process.wait()
        finished.write(f"{name} {slot.timestamp()} {code}\n")

    scheduler = AsyncIOScheduler(
        executors={"default": SlotExecutor()},
        job_defaults={
            "misfire_grace_time": None,
            "coalesce": False,
            "max_instances": MAX_INSTANCES,
        },
        timezone=UTC,
    )
    for body in bodies:
        scheduler.add_job(
            run,
            trigger_for(body["schedule"]),
            args=(body["name"], body["command"]),
            id=body["name"],
        )
    scheduler.start()
    open(jobs_path + ".ready", "w").close()

    while True:
        await asyncio.sleep(FLUSH_EVERY_S)
        finished.flush()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(sys.argv[1], sys.argv[2]))
