"""Replication: the pysyncobj object that orders commands and applies them.

Every change to dcron's state is a command, a plain JSON-serialisable dict.
``submit`` hands it to Raft and returns a future that resolves, on the Tornado
IOLoop, with what ``Store.apply`` returned once the command is committed and
applied on this node. A node alone is a cluster of one and takes the same path
(shared/DESIGN.md, invariant 1).

pysyncobj runs Raft, applies entries and calls callbacks on its own tick
thread. Nothing here blocks the IOLoop: callbacks cross over with
``IOLoop.add_callback``.

Snapshots carry the SQLite database itself: a copy made with SQLite's backup
API, with pysyncobj's own state stored beside the tables, so a follower far
behind is brought up to date by one file. The copy is written on a thread of
its own (``Snapshots``), never on the tick thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pysyncobj import FAIL_REASON, SERIALIZER_STATE, SyncObj, SyncObjConf, replicated
from pysyncobj.pipe_notifier import PipeNotifier
from pysyncobj.utility import TcpUtility, UtilityException
from tornado.ioloop import IOLoop

from dcron.errors import Unavailable
from dcron.store import FatalStoreError, Store, read_snapshot_meta

logger = logging.getLogger(__name__)

COMMIT_TIMEOUT_S = 10.0
# A deposed leader believes it leads until this many seconds pass without a
# majority answering (shared/PYSYNCOBJ.md, trap 6); the default 30 s is far
# too long for a scheduler.
LEADER_FALLBACK_S = 3.0
# A follower that hears nothing from the leader for a random time in this
# range starts an election. pysyncobj's 0.4-1.4 s lets a busy two-core machine
# (a slow tick, a node starting up) depose a healthy leader; 1-2 s still moves
# leadership well within 3 s of a leader's death.
ELECTION_TIMEOUT_MIN_S = 1.0
ELECTION_TIMEOUT_MAX_S = 2.0
# How often a node retries a lost connection to a peer. pysyncobj's 5 s means a
# restarted follower hears no leader for seconds and starts an election that
# deposes it; half a second reconnects it first.
CONNECTION_RETRY_S = 0.5
# Followers keep idle links open this long, so the first vote request of an
# election is not lost to a reconnect (trap 5).
CONNECTION_TIMEOUT_S = 30.0
# The tick thread wakes at least this often. With pysyncobj's append batching
# on, a submitted command waits for the next tick to enter the log and for
# another to be applied (docs/benchmarks.md, point 5): 10 ms keeps a commit on
# a cluster of one near 20 ms while a node's idle CPU stays low.
TICK_PERIOD_S = 0.01
APPEND_ENTRIES_PERIOD_S = 0.02
COMPACTION_MIN_ENTRIES = 20000
COMPACTION_MIN_TIME_S = 600
EXIT_STORE_FAILED = 70

FAILURES = {
    FAIL_REASON.QUEUE_FULL: "too many pending commands",
    FAIL_REASON.MISSING_LEADER: "no leader",
    FAIL_REASON.DISCARDED: "command discarded by a leader change",
    FAIL_REASON.NOT_LEADER: "no leader",
    FAIL_REASON.LEADER_CHANGED: "leader changed",
    FAIL_REASON.REQUEST_DENIED: "request denied",
}


@dataclass(frozen=True)
class RaftSettings:
    self_addr: str | None  # None: a read-only node that follows without voting
    partners: tuple[str, ...]
    data_dir: str
    bind_addr: str | None
    password: str | None = None
    compaction_entries: int = COMPACTION_MIN_ENTRIES
    max_pending: int = 10000


class Replica(SyncObj):  # type: ignore[misc]
    """This node's member of the Raft group, applying commands to the store."""

    def __init__(
        self,
        settings: RaftSettings,
        store: Store,
        on_state_changed: Callable[[bool], None] | None = None,
        on_ready: Callable[[], Any] | None = None,
    ) -> None:
        self.store = store
        self._loop = IOLoop.current()
        snapshot_path = os.path.join(settings.data_dir, "raft.snapshot")
        self.snapshots = Snapshots(snapshot_path, store.snapshot_to)
        # The snapshot pysyncobj loads first is this node's own, at restart;
        # any later one was received from a leader (_read_snapshot).
        self._restarting = os.path.exists(snapshot_path)
        self._on_state_changed = on_state_changed
        self._on_ready = on_ready
        conf = SyncObjConf(
            bindAddress=settings.bind_addr,
            journalFile=os.path.join(settings.data_dir, "raft.journal"),
            # Without a dump file a node restarted after compaction never
            # applies again (trap 1).
            fullDumpFile=snapshot_path,
            serializer=self.snapshots.start,
            serializeChecker=self.snapshots.state,
            deserializer=self._read_snapshot,
            dynamicMembershipChange=True,
            leaderFallbackTimeout=LEADER_FALLBACK_S,
            connectionTimeout=CONNECTION_TIMEOUT_S,
            connectionRetryTime=CONNECTION_RETRY_S,
            # A cluster of one has nobody to disturb: it elects itself at once.
            raftMinTimeout=ELECTION_TIMEOUT_MIN_S if settings.partners else 0.1,
            raftMaxTimeout=ELECTION_TIMEOUT_MAX_S if settings.partners else 0.2,
            autoTickPeriod=TICK_PERIOD_S,
            appendEntriesPeriod=APPEND_ENTRIES_PERIOD_S,
            logCompactionMinEntries=settings.compaction_entries,
            logCompactionMinTime=COMPACTION_MIN_TIME_S,
            onStateChanged=self._state_changed,
            onReady=self._ready,
            password=settings.password,
            commandsQueueSize=settings.max_pending,
        )
        super().__init__(settings.self_addr, list(settings.partners), conf=conf)
        # Commands wait for no timer (docs/benchmarks.md, point 5): a submit
        # wakes the tick thread, and a tick that added entries or advanced
        # the commit index sends them at once, all of that tick's entries
        # in one message per peer. pysyncobj's own choice is either a message
        # per command (appendEntriesUseBatch off) or a message per
        # appendEntriesPeriod, which adds tens of milliseconds to each commit.
        self._waker = PipeNotifier(self._poller)
        self._announced = (0, 0)
        self.addOnTickCallback(self._after_tick)

    # ---- applying ----------------------------------------------------------

    @replicated
    def apply_command(self, command: dict[str, Any]) -> dict[str, Any]:
        # pysyncobj advances raftLastApplied after this returns, so the entry
        # being applied is the next index (trap 3).
        index = self.raftLastApplied + 1
        try:
            return self.store.apply(index, command)
        except FatalStoreError:
            # A replica that cannot write must not go on applying: the others
            # would move ahead of a store that silently lost a command. Exit
            # so a supervisor restarts the node, which replays from the log.
            logger.critical("store write failed; stopping the node", exc_info=True)
            os._exit(EXIT_STORE_FAILED)

    async def submit(
        self, command: dict[str, Any], timeout: float = COMMIT_TIMEOUT_S
    ) -> dict[str, Any]:
        """Commit ``command`` through Raft and return what applying it returned.

        Raises Unavailable when there is no leader or the commit takes longer
        than ``timeout`` seconds.
        """
        # Without a leader, or with a leader cut off from its majority, the
        # command would only wait out its timeout: say so at once instead.
        if self._getLeader() is None:
            raise Unavailable("no leader")
        if not self.hasQuorum:
            raise Unavailable("no leader: this node cannot reach a majority")
        future, callback = self._pysyncobj_future()
        self.apply_command(command, callback=callback)
        self._waker.notify()
        try:
            return dict(await asyncio.wait_for(asyncio.shield(future), timeout))
        except TimeoutError:
            raise Unavailable("no leader: the commit timed out") from None

    def _pysyncobj_future(
        self,
    ) -> tuple[asyncio.Future[Any], Callable[[Any, int], None]]:
        """A future on the IOLoop and the pysyncobj callback that resolves it.

        pysyncobj calls back on its tick thread; the result crosses to the
        loop with ``add_callback``. A failure becomes Unavailable naming why.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        loop = self._loop

        def resolve(result: Any, error: int) -> None:
            if future.done():
                return
            if error == FAIL_REASON.SUCCESS:
                future.set_result(result)
            else:
                reason = FAILURES.get(error, f"replication error {error}")
                future.set_exception(Unavailable(reason))

        def callback(result: Any, error: int) -> None:
            loop.add_callback(resolve, result, error)

        return future, callback

    def _after_tick(self) -> None:
        """On the leader, after each tick: send what this tick changed now.

        Runs on the tick thread, after the commands that arrived during the
        tick entered the log. On a cluster of one, a new entry is committed
        by the next tick, so that tick comes at once instead of after the
        tick period.
        """
        if not self._isLeader():
            return
        log_index = self._SyncObj__getCurrentLogIndex()
        progress = (log_index, self.raftCommitIndex)
        if progress == self._announced:
            return
        self._announced = progress
        if self.otherNodes or self.readonlyNodes:
            self._SyncObj__sendAppendEntries()
        if log_index > self.raftCommitIndex:
            self._waker.notify()

    # ---- leadership --------------------------------------------------------

    def _state_changed(self, old: int, new: int) -> None:
        if self._on_state_changed is not None:
            self._loop.add_callback(self._on_state_changed, self._isLeader())

    def _ready(self) -> None:
        if self._on_ready is not None:
            self._loop.add_callback(self._on_ready)

    def is_leader(self) -> bool:
        return bool(self._isLeader())

    def leader_addr(self) -> str | None:
        leader = self._getLeader()
        return None if leader is None else str(leader.id)

    def status(self) -> dict[str, Any]:
        return dict(self.getStatus())

    async def change_membership(self, action: str, addr: str) -> None:
        """Add or remove one server (``action`` is "add" or "remove")."""
        future, on_done = self._pysyncobj_future()
        if action == "add":
            self.addNodeToCluster(addr, callback=on_done)
        else:
            self.removeNodeFromCluster(addr, callback=on_done)
        try:
            await asyncio.wait_for(asyncio.shield(future), COMMIT_TIMEOUT_S)
        except TimeoutError:
            raise Unavailable("no leader: the membership change timed out") from None

    # ---- snapshots ---------------------------------------------------------

    def _read_snapshot(self, path: str) -> Any:
        if self._restarting:
            self._restarting = False
            log = self._SyncObj__raftLog
            head = [(entry[1], entry[2]) for entry in log[:2]] if len(log) > 1 else []
            path = self.snapshots.restart_point(head)
        return pickle.loads(self.store.restore_from(path))


class Snapshots:
    """Writes raft snapshots of the store on a thread of their own.

    pysyncobj calls a custom serializer on its tick thread and waits for it to
    return. A snapshot is a copy of the whole database, hundreds of megabytes
    once a million executions are stored, and while the tick thread copied it
    the node sent no heartbeat and committed nothing, on every compaction:
    0.4 s for 233 MB with the file in the page cache, seconds on a slow disk,
    long enough for followers to depose a healthy leader. So
    ``start`` only starts the copy, and pysyncobj, asking ``state`` on every
    tick, drops the log the snapshot covers once it says SUCCESS.

    The copy reads through a connection of its own while the tick thread goes
    on applying, so it may hold entries past the index pysyncobj snapshots at.
    Replaying those over it is harmless: the store skips every index it has
    applied (shared/DESIGN.md, invariant 3).

    The snapshot before the newest is kept until pysyncobj has dropped the
    log the newest covers, for a restart that falls in between: see
    restart_point.
    """

    def __init__(self, path: str, copy: Callable[[str, bytes], None]) -> None:
        self.path = path
        self._copy = copy
        self._state = SERIALIZER_STATE.NOT_SERIALIZING
        self._thread: threading.Thread | None = None
        # SUCCESS was reported and the previous snapshot may go (state()).
        self._compacting = False
        # A copy cut short by a stop or a crash; the snapshot before it stands.
        _remove(self._part)

    @property
    def _part(self) -> str:
        return self.path + ".part"

    @property
    def previous(self) -> str:
        return self.path + ".prev"

    def restart_point(self, log_head: list[tuple[int, int]]) -> str:
        """The snapshot a restarted node must load, given the (index, term) of
        the first two entries of its raft log.

        pysyncobj keeps its log at a restart only if the snapshot's last two
        entries are the log's first two. Otherwise it cuts the log back to the
        snapshot, and every committed entry past the snapshot goes: the store
        has applied them, the next commands take their indexes, and the store
        skips those commands as replays. A node stopped after a new snapshot
        replaced the old one but before its log was compacted has a log that
        follows the previous snapshot, which is then the one to load.
        """
        for path in (self.path, self.previous):
            try:
                entries = pickle.loads(read_snapshot_meta(path))[:2]
            except (OSError, ValueError, pickle.UnpicklingError):
                continue
            if [(entry[1], entry[2]) for entry in reversed(entries)] == log_head:
                if path != self.path:
                    logger.warning(
                        "raft log follows the snapshot before the newest "
                        "(stopped before the log was compacted); loading %s",
                        path,
                    )
                return path
        logger.warning(
            "raft log does not follow any snapshot; it restarts from %s", self.path
        )
        return self.path

    def start(self, tmp_path: str, raft_meta: Any) -> None:
        """pysyncobj's serializer: begin a snapshot holding ``raft_meta``."""
        # pysyncobj renames tmp_path over the snapshot as soon as this returns.
        # With no file there the rename fails, which it ignores; a file left
        # there by a crash would replace the snapshot, so it goes first.
        _remove(tmp_path)
        if self._state == SERIALIZER_STATE.SERIALIZING:
            return
        self._state = SERIALIZER_STATE.SERIALIZING
        self._thread = threading.Thread(
            target=self._write,
            args=(pickle.dumps(raft_meta),),
            name="dcron-snapshot",
            daemon=True,
        )
        self._thread.start()

    def state(self) -> int:
        """pysyncobj's serializeChecker: SUCCESS or FAILED once per snapshot."""
        state = self._state
        if state in (SERIALIZER_STATE.SUCCESS, SERIALIZER_STATE.FAILED):
            self._state = SERIALIZER_STATE.NOT_SERIALIZING
        elif state == SERIALIZER_STATE.NOT_SERIALIZING and self._compacting:
            # pysyncobj dropped the log the newest covers right after it was
            # told SUCCESS, on the tick before this one: the previous
            # snapshot is no longer needed, and is a whole copy of the store.
            self._compacting = False
            _remove(self.previous)
        self._compacting = state == SERIALIZER_STATE.SUCCESS
        return state

    def wait(self, timeout: float) -> bool:
        """Wait for a snapshot being written; False if one still is."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def _write(self, raft_meta: bytes) -> None:
        # Written beside the snapshot and renamed over it once complete: until
        # then the old snapshot and the whole log it leaves stay as they were.
        part = self._part
        began = time.monotonic()
        try:
            _remove(part)
            self._copy(part, raft_meta)
            # The newest becomes the previous one, by a link, so that a
            # complete snapshot stands under the usual name at every moment.
            if os.path.exists(self.path):
                _remove(self.previous + ".part")
                os.link(self.path, self.previous + ".part")
                os.replace(self.previous + ".part", self.previous)
            os.replace(part, self.path)
            _sync_directory(os.path.dirname(self.path) or ".")
        except Exception:
            logger.warning("snapshot failed; the log is kept", exc_info=True)
            _remove(part)
            self._state = SERIALIZER_STATE.FAILED
            return
        logger.info(
            "snapshot written in %.1fs (%d bytes)",
            time.monotonic() - began,
            os.path.getsize(self.path),
        )
        self._state = SERIALIZER_STATE.SUCCESS


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _sync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- talking to a cluster this node is not part of yet ---------------------
#
# These calls block; the node makes them from a worker thread while it starts.

PROBE_TIMEOUT_S = 3.0


class KeyRefused(Exception):
    """A peer accepted the connection but not this node's encryption key."""


def _reachable(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def admin(addr: str, message: list[Any], password: str | None) -> Any:
    """Send one pysyncobj admin message (status, add, remove) to a server.

    Returns None when the server cannot be reached; raises KeyRefused when it
    can be reached but drops us, which is what a wrong key looks like.
    """
    try:
        return TcpUtility(password, timeout=PROBE_TIMEOUT_S).executeCommand(
            addr, message
        )
    except UtilityException:
        if _reachable(addr):
            raise KeyRefused(addr) from None
        return None


def cluster_of(addr: str, password: str | None) -> tuple[str | None, list[str]]:
    """The leader and the voting servers of the cluster ``addr`` belongs to."""
    status = admin(addr, ["status"], password)
    if not isinstance(status, dict):
        return None, []
    prefix = "partner_node_status_server_"
    servers = [str(status["self"].id)]
    servers += [key[len(prefix) :] for key in status if key.startswith(prefix)]
    leader = status.get("leader")
    return (None if leader is None else str(leader.id)), servers
