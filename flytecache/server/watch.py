"""What a serving process keeps an eye on between requests: the WAL and the schema.

One daemon thread ticks every second. On SQLite it runs a ``PASSIVE`` checkpoint (it copies
what no reader needs, never waits and never blocks a writer), publishes the ``-wal`` size, and
notices when checkpoints cannot pass a reader: SQLite cannot checkpoint past the oldest open
read transaction, so one external process holding one makes the WAL grow with every write
(883 MiB after 50k puts, measured) and slows every put. After ``wal_blocked_warning`` of that
it logs a warning naming the processes holding read transactions. On every backend it checks
that the schema is still the one the server was started for (``flytecache db downgrade`` under
a running server): while it is not, every RPC answers UNAVAILABLE saying so.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from flytecache.server.metrics import Metrics
from flytecache.store import CacheStore

__all__ = ["SchemaGuard", "Watch"]

log = logging.getLogger("flytecache.server")

TICK_SECONDS = 1.0
"""One PASSIVE checkpoint and one one-row SELECT a second: nothing next to the requests."""


class SchemaGuard:
    """Whether the database schema is still the one this server runs: :attr:`lost` is the
    message RPCs answer with (UNAVAILABLE) while it is not, else ``None``."""

    def __init__(self, store: CacheStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self.lost: str | None = None

    def check(self) -> str | None:
        """Read the schema revision (one short read transaction) and update :attr:`lost`.

        A failure to read it leaves :attr:`lost` as it was (the database being unreachable is
        reported by the calls themselves).
        """
        from flytecache.errors import FlyteCacheError
        from flytecache.store.opening import schema_state

        try:
            state = schema_state(self._store.engine)
        except FlyteCacheError:
            return self.lost
        with self._lock:
            before = self.lost
            if state.at_head:
                self.lost = None
                if before is not None:
                    log.warning("the database schema is back at %s: serving again", state.head)
            else:
                self.lost = (
                    f"the database schema is at {state.current or '(empty)'}, not {state.head}, "
                    "the one this server runs: it was changed under the running server (by "
                    "`flytecache db downgrade`?); run `flytecache db upgrade` to serve again"
                )
                if before is None:
                    log.error("%s; answering UNAVAILABLE until then", self.lost)
            return self.lost


class Watch:
    """The watch thread over ``store``: :meth:`start` it, :meth:`close` it when serving ends.

    ``wal_blocked_warning`` is how long checkpoints may stay blocked before the warning (and
    again after each further such period while they still are).
    """

    def __init__(
        self,
        store: CacheStore,
        *,
        metrics: Metrics,
        schema: SchemaGuard,
        wal_blocked_warning: timedelta,
        tick: float = TICK_SECONDS,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._schema = schema
        self._warn_after = wal_blocked_warning.total_seconds()
        self._tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flytecache-watch", daemon=True)
        self._sqlite = store.is_sqlite
        if self._sqlite:
            metrics.enable_wal()
        self._previous: tuple[int, int] | None = None  # (frames, checkpointed) at the last tick
        self._blocked_since: float | None = None
        self._warned_at: float | None = None
        self._failing = False

    def start(self) -> None:
        """Start ticking (the first tick runs at once)."""
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and wait for it (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self._tick)

    def tick(self) -> None:
        """One round: the schema, then (SQLite) the WAL. Never raises."""
        self._schema.check()
        if not self._sqlite:
            return
        from flytecache.errors import FlyteCacheError

        try:
            self._watch_wal()
        except (FlyteCacheError, OSError) as error:
            if not self._failing:  # one line per outage, not one a second
                log.warning("could not check the WAL: %s", error)
            self._failing = True
        else:
            self._failing = False

    def _watch_wal(self) -> None:
        from flytecache.config import format_size
        from flytecache.store import admin

        engine = self._store.engine
        state = admin.wal_state(engine)
        assert self._metrics.wal_bytes is not None
        assert self._metrics.wal_blocked_seconds is not None
        assert self._metrics.wal_checkpoints_blocked is not None
        self._metrics.wal_bytes.set(state.wal_bytes)
        if state.frames is None or state.checkpointed is None:
            return  # SQLite's own checkpoint was running: this tick learns nothing
        now = time.monotonic()
        previous, self._previous = self._previous, (state.frames, state.checkpointed)
        # Blocked: frames are left behind and the checkpoint stopped where it stopped a tick
        # ago, i.e. a reader has held its snapshot since then. A checkpoint that merely trails
        # a busy writer moves on between ticks; a restarted WAL has fewer frames.
        blocked = (
            not state.complete
            and previous is not None
            and state.checkpointed == previous[1]
            and state.frames >= previous[0]
        )
        if not blocked:
            if self._warned_at is not None:
                log.warning(
                    "WAL checkpoints pass again (after %.0f s blocked); WAL %s",
                    now - (self._blocked_since or now),
                    format_size(state.wal_bytes),
                )
            self._blocked_since = self._warned_at = None
            self._metrics.wal_blocked_seconds.set(0)
            if state.complete:
                limit = self._store.settings.wal_size_limit
                if admin.truncate_wal_if_idle(engine, limit):
                    self._metrics.wal_bytes.set(admin.sqlite_files(engine)["wal"])
            return
        self._metrics.wal_checkpoints_blocked.inc()
        if self._blocked_since is None:
            self._blocked_since = now - self._tick  # it was already pinned at the last tick
        blocked_for = now - self._blocked_since
        self._metrics.wal_blocked_seconds.set(blocked_for)
        since_warning = now - (self._warned_at or self._blocked_since)
        if since_warning >= self._warn_after:
            self._warned_at = now
            log.warning(
                "WAL checkpoints blocked for %.0f s: %d of %d WAL frames cannot be copied into "
                "the database and the WAL (%s) grows with every write; %s",
                blocked_for,
                state.frames - state.checkpointed,
                state.frames,
                format_size(state.wal_bytes),
                admin.blocking_readers_hint(engine),
            )
