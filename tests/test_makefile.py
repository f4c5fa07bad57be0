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
