"""One installed package: `pip install .` puts splitnn alone into site-packages, with
the worker and the orchestrator inside it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],  # fmt: skip
        check=True,
        capture_output=True,
        env={**os.environ, "PIP_ROOT_USER_ACTION": "ignore"},
    )
    return target


def test_splitnn_is_the_only_top_level_package(installed):
    (dist_info,) = installed.glob("splitnn-*.dist-info")
    packages = {p.name for p in installed.iterdir() if (p / "__init__.py").is_file()}

    assert (dist_info / "top_level.txt").read_text().split() == ["splitnn"]
    assert packages == {"splitnn"}


def test_worker_and_orchestrator_install_inside_splitnn(installed):
    package = installed / "splitnn"

    assert (package / "services" / "segment_host.py").is_file()
    assert (package / "orchestrator" / "cli.py").is_file()
    assert (package / "orchestrator" / "seed.toml").is_file()
    assert (package / "v1" / "worker_pb2.pyi").is_file()


def test_the_installed_package_imports_outside_the_checkout(installed, tmp_path):
    code = "import splitnn.services.server, splitnn.orchestrator.cli; import services"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(installed)},
    )

    assert "No module named 'services'" in result.stderr, result.stderr


def test_every_module_of_the_tree_is_installed(installed):
    """A subpackage left out of pyproject's list (splitnn.nn once was) installs nothing."""
    trees = {"splitnn": ROOT / "splitnn", "services": ROOT / "services"}
    trees["orchestrator"] = ROOT / "orchestrator"
    package = installed / "splitnn"
    for name, tree in trees.items():
        base = package if name == "splitnn" else package / name
        for source in tree.rglob("*.py"):
            assert (base / source.relative_to(tree)).is_file(), f"{source} not installed"
