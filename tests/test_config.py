"""Config errors are found before any worker is touched, naming file, field and expectation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from splitnn.errors import ConfigError
from splitnn.orchestrator.config import load_config

ROOT = Path(__file__).resolve().parent.parent
SEED = (ROOT / "examples" / "seed.toml").read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("epochs = 300", "epocs = 300", r"training\.epocs: unknown field"),
        (
            'type = "Tanh"',
            'type = "Tanhh"',
            r"segments\[0\]\.layers\[1\]: unknown layer type 'Tanhh'",
        ),
        ("in_features = 4,", "in_feature = 4,", r"Linear has no argument 'in_feature'"),
        ("in_features = 4,", 'in_features = "4",', r"Linear\.in_features must be int"),
        ('host = "bob"', 'host = "bobb"', r"segments\[2\]\.host: unknown host 'bobb'"),
        (
            'owners = ["alice", "bob", "claire"]',
            'owners = ["alice", "dave"]',
            r"owners\[1\]: unknown host",
        ),
        (
            "in_features = 3, out_features = 2",
            "in_features = 5, out_features = 2",
            r"segments\[3\]: takes no input of shape \[3\]",
        ),
        ('name = "sgd"', 'name = "sgdd"', r"optimizer.*'sgdd' is not one of"),
        ('loss = "sum_squared_error"', 'loss = "l2"', r"training\.loss: expected one of"),
        ("lr = 0.2", "lr = -1", r"optimizer.*lr.*>= 0"),
        ("input_shape = [4]", "input_shape = [0]", r"input_shape: expected a list of positive"),
    ],
)
def test_config_error_names_file_field_and_expectation(tmp_path, old, new, expected):
    assert old in SEED
    path = write(tmp_path, SEED.replace(old, new, 1))
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_first_segment_must_be_on_the_owner(tmp_path):
    text = SEED.replace('host = "owner"', 'host = "alice"', 1)
    with pytest.raises(ConfigError, match=r"segments\[0\]\.host: the first segment"):
        load_config(write(tmp_path, text))


def test_not_toml_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "seed = = 1"))


def test_cli_reports_a_config_typo_and_starts_no_worker(tmp_path):
    path = write(tmp_path, SEED.replace("epochs = 300", "epocs = 300"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "splitnn.orchestrator.cli",
            "train",
            str(path),
            "--out",
            str(tmp_path / "o"),
        ]
        + ["--local"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "training.epocs: unknown field" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_examples_all_load():
    for path in sorted((ROOT / "examples").glob("*.toml")):
        assert load_config(path).segments


@pytest.mark.parametrize("fork", ["1", "0"], ids=["forked", "processes"])
def test_local_workers_do_not_outlive_a_killed_orchestrator(tmp_path, fork):
    import os
    import signal
    import time

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "splitnn.orchestrator.cli",
            "train",
            str(ROOT / "examples" / "seed.toml"),
        ]
        + ["--out", str(tmp_path / "o"), "--local"],
        cwd=ROOT,
        env=dict(os.environ, SPLITNN_FORK_WORKERS=fork),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def parent_of(pid: str) -> int | None:
        try:
            return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError):
            return None

    def descendants() -> list[int]:
        """The orchestrator's processes below it: the fork server and the workers."""
        parents = {int(p): parent_of(p) for p in os.listdir("/proc") if p.isdigit()}
        found, frontier = [], [process.pid]
        while frontier:
            below = [pid for pid, parent in parents.items() if parent in frontier]
            found += below
            frontier = below
        return found

    def is_worker(pid: int) -> bool:
        """Forked workers name themselves; a worker of its own runs the server module."""
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
            cmdline = open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
        except (FileNotFoundError, ProcessLookupError):
            return False
        return comm == "splitnn-worker" or "services.server" in cmdline

    def children():
        return [pid for pid in descendants() if is_worker(pid)]

    deadline = time.monotonic() + 60
    while len(children()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = children()
    assert len(workers) == 3
    workers = descendants()  # the fork server too, where workers are forked
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 20
    while any(os.path.exists(f"/proc/{pid}") for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [p for p in workers if os.path.exists(f"/proc/{p}")]
    for pid in alive:  # never leave a process behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not alive
