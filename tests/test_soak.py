"""What the soak (tests/soak.py) found, kept as plain tests."""

from __future__ import annotations

import threading


def test_list_collections_while_a_collection_is_deleted(server, client):
    """ListCollections read the status of a collection that DeleteCollection was removing at that moment
    and answered INTERNAL (its database file was gone); now the deleted collection is simply not listed."""
    client.create_collection("soak-gone")
    registry = server.app.service.registry
    store = registry.get("soak-gone")
    original = store.status
    deleted = threading.Event()

    def status_after_a_delete():
        # DeleteCollection wins the race: the store is closed and its files removed before it is read.
        if not deleted.is_set():
            deleted.set()
            registry.delete("soak-gone")
        return original()

    store.status = status_after_a_delete
    names = [c.name for c in client.list_collections()]
    assert deleted.is_set() and "soak-gone" not in names and "demo" in names
