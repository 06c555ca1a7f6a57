"""Crash-safety harness: writers SIGKILLed at random moments, then the database is audited.

Each writer puts entries with three inline outputs and takes/releases leases. After a put
returns, the writer appends the key and a digest of its outputs to an acknowledgement log
(one unbuffered write); a put that is acknowledged there must survive the kill intact.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import time
from datetime import timedelta
from pathlib import Path

from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import literals_pb2

from flytecache import CacheStore
from flytecache.store.codec import literal_map_entries

OUTPUTS_PER_ENTRY = 3


def outputs_for(key: str, rng: random.Random) -> literals_pb2.LiteralMap:
    literals = literals_pb2.LiteralMap()
    for n in range(OUTPUTS_PER_ENTRY):
        literals.literals[f"o{n}"].scalar.binary.value = rng.randbytes(rng.randrange(1, 4096))
    literals.literals["o0"].scalar.binary.tag = key
    return literals


def digest(literals: literals_pb2.LiteralMap) -> str:
    return hashlib.sha256(literals.SerializeToString(deterministic=True)).hexdigest()


def writer(path: str, ack_path: str, name: str, seed: int) -> None:
    """Write until killed."""
    rng = random.Random(seed)
    fd = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    with CacheStore.open(path) as store:
        i = 0
        while True:
            i += 1
            key = f"{name}-{seed}-{i}"
            literals = outputs_for(key, rng)
            store.put(key, cs.CachedOutput(output_literals=literals))
            os.write(fd, f"{key} {digest(literals)}\n".encode())
            lease_key = f"lease-{rng.randrange(5)}"
            store.get_or_extend_reservation(lease_key, name, timedelta(seconds=1))
            if rng.random() < 0.5:
                store.release_reservation(lease_key, name)
            if rng.random() < 0.1:
                store.put(key, cs.CachedOutput(output_literals=literals), overwrite=True)


def run_round(path: str, workdir: Path, round_no: int, writers: int = 3) -> int:
    """Fork writers, kill them at a random moment; return how many puts were acknowledged."""
    rng = random.Random(round_no)
    pids = []
    for w in range(writers):
        pid = os.fork()
        if pid == 0:  # child: never return into the test runner
            try:
                ack = workdir / f"ack-{round_no}-{w}.log"
                writer(path, str(ack), f"w{w}", round_no * 100 + w)
            finally:
                os._exit(0)
        pids.append(pid)
    time.sleep(rng.uniform(0.05, 0.4))
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        os.waitpid(pid, 0)
    return sum(len(p.read_text().splitlines()) for p in workdir.glob(f"ack-{round_no}-*.log"))


def audit(path: str, workdir: Path, pattern: str = "ack-*.log") -> dict[str, int]:
    """Check integrity, acknowledged puts, whole entries and sane leases; raise on a problem.

    ``pattern`` picks the acknowledgement logs to verify (one round's, or all of them).
    """
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        # An entry is one row (its payload, or for a large one the outputs row written in
        # the same transaction): each must hold every output.
        partial = [
            key
            for key, payload in conn.execute(
                "SELECT e.key, coalesce(e.payload, o.payload) FROM entries e "
                "LEFT JOIN outputs o ON o.entry_id = e.id AND e.payload IS NULL "
                "WHERE e.output_uri IS NULL"
            )
            if payload is None or len(literal_map_entries(payload)) != OUTPUTS_PER_ENTRY
        ]
        assert partial == [], f"entries without all their outputs: {partial[:5]}"
        bad_leases = conn.execute(
            "SELECT key FROM reservations WHERE owner_id = '' OR expires_at <= updated_at "
            "OR heartbeat_interval <= 0"
        ).fetchall()
        assert bad_leases == [], f"inconsistent leases: {bad_leases[:5]}"
        entries = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    conn.close()
    acknowledged = 0
    with CacheStore.open(path) as store:
        for log in workdir.glob(pattern):
            for line in log.read_text().splitlines():
                parts = line.split()
                if len(parts) != 2:
                    continue  # a torn last line: the ack itself was cut by the kill
                key, expected = parts
                got = store.get(key).output_literals
                assert digest(got) == expected, f"{key} changed"
                acknowledged += 1
    return {"entries": entries, "acknowledged": acknowledged}
