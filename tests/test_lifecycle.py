"""Health follows the service's life: NOT_SERVING while loading, SERVING, NOT_SERVING while draining."""

from __future__ import annotations

import pytest
from conftest import make_config
from semsearch import SearchClient, UnavailableError


def test_health_and_unavailable_while_loading_then_serving_then_draining(tmp_path, embedder, explainer):
    from semsearch_server.app import Application

    app = Application(make_config(tmp_path / "data"), embedder=embedder, explainer=explainer)
    port = app.start()
    client = SearchClient(f"127.0.0.1:{port}", timeout=30)
    try:
        assert client.health() == "NOT_SERVING"
        assert client.health(service="") == "NOT_SERVING"
        with pytest.raises(UnavailableError, match="loading"):
            client.search("anything")
        app.load()
        assert client.health() == "SERVING" and client.health(service="") == "SERVING"
        assert client.search("anything") == []
        app.servicer.detach("draining")  # what stop() does once in-flight calls are done
        from semsearch_server.transport.server import set_health

        set_health(app.health, serving=False)
        assert client.health() == "NOT_SERVING"
        with pytest.raises(UnavailableError, match="draining"):
            client.search("anything")
    finally:
        client.close()
        app.stop(grace=0)
