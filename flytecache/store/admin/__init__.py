"""Operator queries, one module per subject: entries (list, show, delete, prune), reservations,
statistics, export/import, health checks and SQLite file maintenance.

Everything here is portable SQLAlchemy Core on the mapped tables and runs on SQLite and
PostgreSQL alike; the few SQLite-only operations check the dialect first and raise
:class:`~flytecache.errors.InvalidArgumentError` on another database. Queries about the cache
take a :class:`~flytecache.CacheStore` (its clock decides ages); checks and file maintenance take
an ``Engine``, since they must work on a database whose schema is not (yet) the store's. Results
are plain dataclasses or dicts, never ORM rows; how they are shown is the CLI's business.
"""

from flytecache.store.admin._base import BATCH, check_output_path, require_sqlite
from flytecache.store.admin.checks import CheckItem, check_database
from flytecache.store.admin.entries import (
    DeleteResult,
    EntryDetail,
    EntryFilter,
    EntryPage,
    EntrySummary,
    PruneResult,
    count_entries,
    delete_entries,
    entry_page,
    get_entry,
    iter_entries,
    prune,
    prune_to,
)
from flytecache.store.admin.maintenance import (
    BackupResult,
    CheckpointResult,
    VacuumResult,
    WalState,
    backup,
    blocking_readers_hint,
    checkpoint,
    other_connections,
    sqlite_files,
    truncate_wal_if_idle,
    vacuum,
    wal_state,
)
from flytecache.store.admin.overview import Group, Overview, overview
from flytecache.store.admin.reservations import (
    ReservationInfo,
    ReservationMatch,
    ReservationPage,
    ReservationState,
    count_reservations,
    gc_reservations,
    get_reservation,
    iter_reservations,
    search_reservations,
)
from flytecache.store.admin.stats import stats
from flytecache.store.admin.transfer import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    ExportStream,
    ImportResult,
    export_entries,
    import_entries,
)

__all__ = [
    "BATCH",
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "BackupResult",
    "CheckItem",
    "CheckpointResult",
    "DeleteResult",
    "EntryDetail",
    "EntryFilter",
    "EntryPage",
    "EntrySummary",
    "ExportStream",
    "Group",
    "ImportResult",
    "Overview",
    "PruneResult",
    "ReservationInfo",
    "ReservationMatch",
    "ReservationPage",
    "ReservationState",
    "VacuumResult",
    "WalState",
    "backup",
    "blocking_readers_hint",
    "check_database",
    "check_output_path",
    "checkpoint",
    "count_entries",
    "count_reservations",
    "delete_entries",
    "entry_page",
    "export_entries",
    "gc_reservations",
    "get_entry",
    "get_reservation",
    "import_entries",
    "iter_entries",
    "iter_reservations",
    "other_connections",
    "overview",
    "prune",
    "prune_to",
    "require_sqlite",
    "search_reservations",
    "sqlite_files",
    "stats",
    "truncate_wal_if_idle",
    "vacuum",
    "wal_state",
]
