"""Tests for dcron.joblist: kept job JSON equals what jobs.as_json renders."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dcron import jobs, scheduler
from dcron.joblist import JobList, Listed
from dcron.store import Store

NOW = datetime(2030, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
FIELDS = ("metadata", "status", "disabled", "next", "owner", "success_count")


class Applier:
    """A store fed commands in log order, as replication would feed it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.index = 0

    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        self.index += 1
        result = self.store.apply(self.index, command)
        assert "error" not in result, result
        return result

    def put(self, name: str, **fields: Any) -> None:
        body = {"name": name, "schedule": "@manually", "command": "true", **fields}
        job = jobs.validate(body, NOW)
        self.apply({"op": "put_job", "job": job, "at": NOW.timestamp()})

    def run(self, name: str, success: bool, trigger: str = "manual") -> None:
        job = self.store.get_job(name)
        assert job is not None
        slot = NOW.timestamp() if trigger == "manual" else _next_slot(job)
        fired = self.apply(scheduler.fire_command(job, slot, trigger, ["n1"], 5))
        (execution,) = fired["executions"]
        self.apply(
            {
                "op": "finish",
                "execution_id": execution["id"],
                "success": success,
                "exit_code": 0 if success else 1,
                "finished_at": slot + 1.5,
            }
        )


def _next_slot(job: dict[str, Any]) -> float:
    fire = jobs.next_run(job, NOW)
    assert fire is not None
    return fire.timestamp()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Applier]:
    store = Store(str(tmp_path / "store.db"))
    yield Applier(store)
    store.close()


def rendered(store: Store, now: datetime) -> list[str]:
    """What JobHandler answers for each job, by name."""
    names = [row[0] for row in store.job_rows()]
    return [json.dumps(jobs.as_json(store.get_job(n) or {}, now)) for n in names]


def texts(listed: list[Listed]) -> list[str]:
    return [entry.json for entry in listed]


def test_listed_json_equals_as_json_for_every_kind_of_job(store):
    store.put("plain")
    store.put(
        "full",
        displayname="Full",
        owner="ops",
        owner_email="ops@example.com",
        tags={"role": "web"},
        metadata={"team": "red"},
        retries=2,
        concurrency="forbid",
        catchup="all",
        catchup_window="6h",
        processors={"log": {"forward": True}},
        command="echo x",
        executor_config={"shell": "true", "timeout": "5s"},
        expires_at="2031-01-01T00:00:00Z",
        timezone="Asia/Tokyo",
        schedule="0 30 9 * * *",
    )
    store.put("child", schedule="", parent_job="full")
    store.put("every", schedule="@every 1m")
    store.put("once", schedule="@at 2030-06-01T00:00:00.5Z")
    store.put("off", schedule="@every 1m", disabled=True)
    store.run("plain", success=True)
    store.run("every", success=False, trigger="schedule")

    listed = JobList(FIELDS).listed(store.store.job_rows(), NOW)

    assert texts(listed) == rendered(store.store, NOW)
    assert [json.loads(entry.json)["name"] for entry in listed] == [
        "child",
        "every",
        "full",
        "off",
        "once",
        "plain",
    ]


def test_fields_are_the_rendered_values(store):
    store.put("a", owner="amy", metadata={"tier": "1"}, schedule="@every 1h")
    store.run("a", success=True)

    (entry,) = JobList(FIELDS).listed(store.store.job_rows(), NOW)

    out = jobs.as_json(store.store.get_job("a") or {}, NOW)
    assert entry.fields == {"name": "a", **{field: out[field] for field in FIELDS}}


def test_an_unchanged_job_is_not_rendered_again(store):
    store.put("a", schedule="@every 1h")
    store.put("b")
    job_list = JobList(FIELDS)
    first = job_list.listed(store.store.job_rows(), NOW)

    again = job_list.listed(store.store.job_rows(), NOW + timedelta(minutes=5))

    assert all(old is new for old, new in zip(first, again, strict=True))


def test_a_run_shows_its_counters_and_status(store):
    store.put("a")
    job_list = JobList(FIELDS)
    job_list.listed(store.store.job_rows(), NOW)

    store.run("a", success=False)
    (entry,) = job_list.listed(store.store.job_rows(), NOW)

    assert entry.fields["status"] == "failed"
    assert texts([entry]) == rendered(store.store, NOW)


def test_next_moves_once_the_clock_reaches_it(store):
    store.put("a", schedule="@every 1m")
    job_list = JobList(FIELDS)
    (before,) = job_list.listed(store.store.job_rows(), NOW)
    later = datetime.fromisoformat(before.fields["next"].replace("Z", "+00:00"))

    (still,) = job_list.listed(store.store.job_rows(), later - timedelta(seconds=1))
    (after,) = job_list.listed(store.store.job_rows(), later)

    assert still is before
    assert after.fields["next"] > before.fields["next"]
    assert texts([after]) == rendered(store.store, later)


def test_a_scheduled_fire_moves_next_before_the_clock_does(store):
    store.put("a", schedule="@every 1m")
    job_list = JobList(FIELDS)
    (before,) = job_list.listed(store.store.job_rows(), NOW)

    store.run("a", success=True, trigger="schedule")
    (after,) = job_list.listed(store.store.job_rows(), NOW)

    assert after.fields["next"] > before.fields["next"]
    assert texts([after]) == rendered(store.store, NOW)


def test_a_clock_stepped_back_renders_again(store):
    store.put("a", schedule="@every 1m")
    job_list = JobList(FIELDS)
    job_list.listed(store.store.job_rows(), NOW)
    earlier = NOW - timedelta(minutes=10)

    listed = job_list.listed(store.store.job_rows(), earlier)

    assert texts(listed) == rendered(store.store, earlier)


def test_a_new_child_changes_its_parents_dependents(store):
    store.put("parent")
    job_list = JobList(FIELDS)
    job_list.listed(store.store.job_rows(), NOW)

    store.put("kid", schedule="", parent_job="parent")
    listed = job_list.listed(store.store.job_rows(), NOW)

    assert json.loads(listed[1].json)["dependent_jobs"] == ["kid"]
    assert texts(listed) == rendered(store.store, NOW)


def test_replaced_and_toggled_jobs_show_their_new_fields(store):
    store.put("a", owner="before")
    job_list = JobList(FIELDS)
    job_list.listed(store.store.job_rows(), NOW)

    store.put("a", owner="after")
    store.apply({"op": "toggle_job", "name": "a", "at": NOW.timestamp()})
    (entry,) = job_list.listed(store.store.job_rows(), NOW)

    assert entry.fields["owner"] == "after"
    assert entry.fields["disabled"] is True
    assert texts([entry]) == rendered(store.store, NOW)


def test_deleted_jobs_are_forgotten(store):
    store.put("a")
    store.put("b")
    job_list = JobList(FIELDS)
    job_list.listed(store.store.job_rows(), NOW)

    store.apply({"op": "delete_job", "name": "a"})
    listed = job_list.listed(store.store.job_rows(), NOW)

    assert [entry.fields["name"] for entry in listed] == ["b"]
    assert list(job_list._kept) == ["b"]
