"""Leases: a build's hold on the records it uses. Held records are never pruned; a lease is
released on exit, or by the next ``Store.open`` once its process is gone."""

from __future__ import annotations

import time

from pybk.core.store.db import StoreDB, new_id
from pybk.core.store.records import Record


class Lease:
    """One lease (``with store.lease() as lease: lease.add(record)``)."""

    def __init__(self, db: StoreDB, lease_id: str):
        self.db = db
        self.id = lease_id

    @classmethod
    def new(cls, db: StoreDB) -> Lease:
        """A new lease owned by this process."""
        lease_id = new_id()
        with db.transaction() as tx:
            tx.execute("INSERT INTO leases(id, owner, created) VALUES (?,?,?)",
                       (lease_id, db.identity, time.time()))
        return cls(db, lease_id)

    def add(self, record: Record | str) -> None:
        """Hold ``record`` and count it as used now."""
        record_id = record if isinstance(record, str) else record.id
        with self.db.transaction() as db:
            db.execute("INSERT OR IGNORE INTO lease_refs(lease_id, record_id) VALUES (?,?)",
                       (self.id, record_id))
            db.execute("UPDATE records SET last_used=?, usage_count=usage_count+1 WHERE id=?",
                       (time.time(), record_id))

    def release(self) -> None:
        with self.db.transaction() as db:
            db.execute("DELETE FROM leases WHERE id=?", (self.id,))

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
