"""The Makefile's install and test commands, as make would run them (make -n: nothing is executed)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry_run(*args: str) -> str:
    """The commands `make -B -n ARGS` would run (-B: as on a fresh machine, whatever .venv holds)."""
    done = subprocess.run(["make", "-B", "-n", *args], cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout


def pip_install_line(output: str) -> str:
    return next(line for line in output.splitlines() if "pip install" in line and "./server[test" in line)


def test_install_uses_only_the_default_index_unless_told():
    assert "--extra-index-url" not in pip_install_line(dry_run("install"))


def test_torch_index_url_is_passed_as_an_extra_index():
    url = "https://download.pytorch.org/whl/cpu"
    line = pip_install_line(dry_run("install", f"TORCH_INDEX_URL={url}"))
    assert f"--extra-index-url {url}" in line


@pytest.mark.parametrize("target", ["test", "test-fast"])
def test_test_targets_report_the_slowest_tests(target):
    pytest_line = next(line for line in dry_run(target).splitlines() if "-m pytest" in line)
    assert "--durations=15" in pytest_line


def test_every_install_step_takes_its_versions_from_the_lock():
    for target in ("install", "run"):
        lines = [line for line in dry_run(target).splitlines() if "pip install" in line and "./server" in line]
        assert lines, f"make {target} installs no server"
        for line in lines:
            assert "-c requirements.lock" in line, line


def test_make_run_installs_no_test_milvus_or_ray_extra():
    lines = [line for line in dry_run("run").splitlines() if "pip install" in line and "./server" in line]
    assert lines and all("./server[" not in line for line in lines), lines


def locked_versions() -> dict[str, str]:
    """{normalised name: version} of requirements.lock, which must pin every package it lists."""
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"requirements.lock: {line!r} is not pinned with =="
        pins[name.lower().replace("_", "-")] = version
    return pins


def test_the_installed_environment_is_the_lock():
    from importlib.metadata import distributions

    pins = locked_versions()
    installed = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in distributions()}
    differ = {
        name: (version, installed[name]) for name, version in pins.items() if installed.get(name, version) != version
    }
    assert not differ, f"installed versions differ from requirements.lock (run make install): {differ}"
    # Every package the tests import is locked, the test extra's included.
    for name in ("torch", "grpcio", "grpcio-tools", "faiss-cpu", "pymilvus", "hypothesis", "lark"):
        assert name in pins, name


def test_the_stub_generator_is_locked_at_the_version_the_stubs_were_made_with():
    stubs = (REPO / "client/src/semsearch/v1/search_service_pb2_grpc.py").read_text()
    made_with = next(line.split("'")[1] for line in stubs.splitlines() if line.startswith("GRPC_GENERATED_VERSION"))
    assert locked_versions()["grpcio-tools"] == made_with
