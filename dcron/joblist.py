"""The job list: each job's API JSON, rendered once and kept until it changes.

``GET /jobs`` over ten thousand jobs cannot afford to decode, render and encode
every job on each request, on the IOLoop. A job's JSON depends only on its row
in the store, the names of its dependent jobs and ``next``; ``next`` moves only
when the clock reaches it or the row's ``last_scheduled_at`` changes. So each
job's JSON is kept as text, beside the few values the list filters and sorts
by, and rendered again only when its row or its dependents differ from the
ones it was rendered from, or the clock has reached the ``next`` it shows.

A JobList is not thread-safe: one belongs to one HTTP application and is used
from its IOLoop.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dcron import jobs, schedule
from dcron.store import Store

_COLUMNS = Store.JOB_ROW_COLUMNS
_NAME = _COLUMNS.index("name")
_PARENT = _COLUMNS.index("parent_job")
_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(slots=True)
class Listed:
    """One job as the list shows it."""

    json: str  # exactly json.dumps(jobs.as_json(job, now))
    fields: dict[str, Any]  # the values the list filters and sorts by, as rendered
    row: tuple[Any, ...]  # the row it was rendered from
    dependents: list[str] | None  # and the names of its dependent jobs
    rendered_at: datetime
    stale_at: datetime  # the ``next`` it shows, or _NEVER


class JobList:
    """Every job's rendered JSON, kept between listings.

    ``fields`` names the values of ``jobs.as_json`` that a listing filters or
    sorts by; ``Listed.fields`` holds those and ``name``.
    """

    def __init__(self, fields: Iterable[str]) -> None:
        self.fields = tuple(dict.fromkeys(("name", *fields)))
        self._kept: dict[str, Listed] = {}

    def listed(self, rows: Sequence[tuple[Any, ...]], now: datetime) -> list[Listed]:
        """The jobs of ``rows`` as the list shows them at ``now``, in row order.

        ``rows`` are every job's ``Store.JOB_ROW_COLUMNS``, as ``Store.job_rows``
        returns them. Renders only the jobs whose kept JSON no longer holds, and
        forgets the jobs missing from ``rows``.
        """
        children: dict[str, list[str]] = {}
        for row in rows:
            if row[_PARENT]:
                children.setdefault(row[_PARENT], []).append(row[_NAME])

        kept = self._kept
        found = []
        for row in rows:
            name = row[_NAME]
            dependents = children.get(name)
            listed = kept.get(name)
            if (
                listed is None
                or not listed.rendered_at <= now < listed.stale_at
                or listed.row != row
                or listed.dependents != dependents
            ):
                listed = self.render(row, dependents, now)
            found.append(listed)

        self._kept = {listed.fields["name"]: listed for listed in found}
        return found

    def render(
        self, row: tuple[Any, ...], dependents: list[str] | None, now: datetime
    ) -> Listed:
        """One job's listing at ``now``, from its row and its dependents' names."""
        out = jobs.as_json(Store.job_from_row(row, dependents or ()), now)

        # The clock reaching the next fire shown is the one change that is not
        # in the row: until then, as_json renders this job the same.
        shown = out["next"]
        return Listed(
            json=json.dumps(out),
            fields={field: out[field] for field in self.fields},
            row=row,
            dependents=dependents,
            rendered_at=now,
            stale_at=_NEVER if shown is None else schedule.parse_time(shown),
        )
