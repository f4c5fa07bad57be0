"""The store contract suite (tests/store_contract.py) on the local store: FAISS + SQLite under a data dir."""

from __future__ import annotations

import pytest
from semsearch_server.index.local_provider import LocalStoreProvider
from store_contract import StoreContract


class TestLocalStore(StoreContract):
    @pytest.fixture
    def provider_factory(self, tmp_path):
        opened: list = []

        def make():
            # A second provider on the same directory is a restart: the stores of the first are closed.
            for provider in opened:
                provider.close_all()
            provider = _ClosingProvider(tmp_path / "data")
            opened.append(provider)
            return provider

        yield make
        for provider in opened:
            provider.close_all()


class _ClosingProvider(LocalStoreProvider):
    """Remembers the stores it opens, so a test's restart can close them like a server's shutdown."""

    def __init__(self, data_dir) -> None:
        super().__init__(data_dir)
        self._open_stores: list = []

    def create(self, *args, **kwargs):
        store = super().create(*args, **kwargs)
        self._open_stores.append(store)
        return store

    def open(self, *args, **kwargs):
        store = super().open(*args, **kwargs)
        self._open_stores.append(store)
        return store

    def close_all(self) -> None:
        while self._open_stores:
            self._open_stores.pop().close()
