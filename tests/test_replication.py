"""Tests for dcron.replication: raft snapshots written off the tick thread."""

from __future__ import annotations

import pickle
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pysyncobj import SERIALIZER_STATE

from dcron import jobs
from dcron.replication import Snapshots
from dcron.store import Store, read_snapshot_meta

NOW = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
RAFT_META = ("last applied entries", "cluster")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(str(tmp_path / "store.db"))
    yield store
    store.close()


def put_jobs(store: Store, first: int, count: int) -> None:
    """Apply put_job commands at raft indexes first .. first + count - 1."""
    for index in range(first, first + count):
        body = {"name": f"job{index}", "schedule": "@manually", "command": "true"}
        command = {"op": "put_job", "job": jobs.validate(body, NOW), "at": 0.0}
        assert "error" not in store.apply(index, command)


def read_snapshot(path: Path) -> tuple[int, int, Any]:
    """(last applied index, job count, raft meta) of a snapshot file."""
    db = sqlite3.connect(path)
    try:
        (applied,) = db.execute("select value from meta where key = 'last_applied'")
        (jobs_held,) = db.execute("select count(*) from job")
        (meta,) = db.execute("select data from raft_meta")
        return int(applied[0]), jobs_held[0], pickle.loads(meta[0])
    finally:
        db.close()


def finish(snapshots: Snapshots) -> int:
    """Wait for the snapshot being written; its state as pysyncobj sees it."""
    assert snapshots.wait(30)
    return snapshots.state()


class TestSnapshots:
    def test_the_serializer_returns_before_the_copy_is_made(self, store, tmp_path):
        put_jobs(store, 1, 3)
        release = threading.Event()

        def held_copy(path: str, meta: bytes) -> None:
            assert release.wait(30)
            store.snapshot_to(path, meta)

        target = tmp_path / "raft.snapshot"
        snapshots = Snapshots(str(target), held_copy)
        snapshots.start(str(tmp_path / "raft.snapshot.tmp"), RAFT_META)

        # pysyncobj's tick thread is back and asks on every tick.
        assert snapshots.state() == SERIALIZER_STATE.SERIALIZING
        assert snapshots.state() == SERIALIZER_STATE.SERIALIZING
        assert not target.exists()

        release.set()
        assert finish(snapshots) == SERIALIZER_STATE.SUCCESS
        assert snapshots.state() == SERIALIZER_STATE.NOT_SERIALIZING
        assert read_snapshot(target) == (3, 3, RAFT_META)
        assert not Path(f"{target}.part").exists()

    def test_a_copy_made_while_the_store_applies_is_one_committed_state(
        self, store, tmp_path
    ):
        put_jobs(store, 1, 200)
        target = tmp_path / "raft.snapshot"
        snapshots = Snapshots(str(target), store.snapshot_to)

        snapshots.start(str(tmp_path / "raft.snapshot.tmp"), RAFT_META)
        put_jobs(store, 201, 300)

        assert finish(snapshots) == SERIALIZER_STATE.SUCCESS
        applied, held, _ = read_snapshot(target)
        # Each index added one job: a copy of one committed state holds as
        # many jobs as the index it says it has applied, wherever it fell.
        assert 200 <= applied <= 500
        assert held == applied

    def test_a_failed_copy_keeps_the_snapshot_before_it(self, store, tmp_path):
        put_jobs(store, 1, 2)
        target = tmp_path / "raft.snapshot"
        first = Snapshots(str(target), store.snapshot_to)
        first.start(str(target) + ".tmp", "old")
        assert finish(first) == SERIALIZER_STATE.SUCCESS
        before = target.read_bytes()

        def broken_copy(path: str, meta: bytes) -> None:
            Path(path).write_bytes(b"half a copy")
            raise OSError(28, "No space left on device")

        snapshots = Snapshots(str(target), broken_copy)
        put_jobs(store, 3, 1)
        snapshots.start(str(target) + ".tmp", "new")

        assert finish(snapshots) == SERIALIZER_STATE.FAILED
        assert snapshots.state() == SERIALIZER_STATE.NOT_SERIALIZING
        assert target.read_bytes() == before
        assert not Path(f"{target}.part").exists()

    def test_a_file_left_where_pysyncobj_renames_from_is_removed(self, store, tmp_path):
        # pysyncobj renames "<snapshot>.tmp" over the snapshot as soon as the
        # serializer returns: one left by a crash must not get there.
        target = tmp_path / "raft.snapshot"
        stale = tmp_path / "raft.snapshot.tmp"
        stale.write_bytes(b"from a crash")
        snapshots = Snapshots(str(target), store.snapshot_to)

        snapshots.start(str(stale), RAFT_META)

        assert not stale.exists()
        assert finish(snapshots) == SERIALIZER_STATE.SUCCESS

    def test_a_copy_cut_short_by_a_crash_is_removed_at_start(self, store, tmp_path):
        target = tmp_path / "raft.snapshot"
        cut_short = tmp_path / "raft.snapshot.part"
        cut_short.write_bytes(b"half a copy")

        Snapshots(str(target), store.snapshot_to)

        assert not cut_short.exists()


class TestRestartPoint:
    """Which snapshot a restarted node loads, given the head of its raft log."""

    @staticmethod
    def write(snapshots: Snapshots, tmp_path: Path, last: int) -> None:
        # pysyncobj's state: the entries at last and last - 1, then the cluster.
        meta = ((b"cmd", last, 1), (b"cmd", last - 1, 1), ["n2", "n3"])
        snapshots.start(str(tmp_path / "raft.snapshot.tmp"), meta)
        assert finish(snapshots) == SERIALIZER_STATE.SUCCESS

    def test_the_newest_snapshot_when_the_log_follows_it(self, store, tmp_path):
        snapshots = Snapshots(str(tmp_path / "raft.snapshot"), store.snapshot_to)
        self.write(snapshots, tmp_path, 77)
        self.write(snapshots, tmp_path, 116)

        assert snapshots.restart_point([(115, 1), (116, 1)]) == snapshots.path

    def test_the_one_before_when_the_log_was_not_compacted_yet(self, store, tmp_path):
        snapshots = Snapshots(str(tmp_path / "raft.snapshot"), store.snapshot_to)
        self.write(snapshots, tmp_path, 77)
        self.write(snapshots, tmp_path, 116)

        assert snapshots.restart_point([(76, 1), (77, 1)]) == snapshots.previous
        meta = pickle.loads(read_snapshot_meta(snapshots.previous))
        assert meta[0][1] == 77

    def test_the_newest_when_the_log_follows_neither(self, store, tmp_path):
        snapshots = Snapshots(str(tmp_path / "raft.snapshot"), store.snapshot_to)
        self.write(snapshots, tmp_path, 116)

        assert snapshots.restart_point([(1, 1), (2, 1)]) == snapshots.path
        assert snapshots.restart_point([]) == snapshots.path

    def test_the_one_before_goes_once_the_log_was_compacted(self, store, tmp_path):
        snapshots = Snapshots(str(tmp_path / "raft.snapshot"), store.snapshot_to)
        self.write(snapshots, tmp_path, 77)
        snapshots.start(str(tmp_path / "raft.snapshot.tmp"), ((b"c", 116, 1),) * 2)
        assert snapshots.wait(30)
        # Until pysyncobj is told, and has compacted its log on that tick,
        # a restart may still need it.
        assert Path(snapshots.previous).exists()

        assert snapshots.state() == SERIALIZER_STATE.SUCCESS
        assert Path(snapshots.previous).exists()
        assert snapshots.state() == SERIALIZER_STATE.NOT_SERIALIZING
        assert not Path(snapshots.previous).exists()
        assert Path(snapshots.path).exists()
