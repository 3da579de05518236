"""The `splitnn` command line says when a subcommand cannot run, instead of hiding it."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from splitnn.orchestrator import cli


@pytest.fixture
def broken_data_module(monkeypatch):
    real = importlib.import_module

    def import_module(name, *args, **kwargs):
        if name == "splitnn.orchestrator.cli_data":
            raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(cli.importlib, "import_module", import_module)


def test_every_subcommand_is_listed():
    choices = cli.build_parser()._subparsers._group_actions[0].choices

    assert {"train", "evaluate", "report", "demo", "data", "health", "certs"} <= set(choices)


def test_a_subcommand_whose_module_fails_to_import_says_why(broken_data_module, capsys):
    parser = cli.build_parser()
    help_text = parser.format_help()

    code = cli.main(["data", "prepare", "digits", "--owners", "a,b", "--out", "x"])

    err = capsys.readouterr().err
    assert code == 2
    assert "splitnn.orchestrator.cli_data failed to import" in err
    assert "sklearn" in err and "splitnn[data]" in err
    assert "data" in help_text


def test_other_subcommands_still_work_beside_a_broken_one(broken_data_module, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["certs", "--help"])

    assert info.value.code == 0
    assert "certs" in capsys.readouterr().out


@pytest.mark.slow
def test_the_demo_command_prints_the_notebooks_run_and_leaves_its_outputs(tmp_path):
    # As the README's first command runs it: the console entry point, in a process of
    # its own, which leaves without Python's teardown once everything is written.
    out = tmp_path / "demo"
    code = "from splitnn.orchestrator.cli import console; console()"
    done = subprocess.run(
        [sys.executable, "-c", code, "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "    alice  Epoch: 0/300  Loss: 3.9986" in lines  # the notebook's first print
    assert lines[-2] == "max |weight difference| vs the same training in one process: 0"
    assert lines[-1].endswith(f"outputs in {out}/")  # the last line, flushed before leaving
    for name in ("model.safetensors", "metrics.jsonl", "curves.png", "report.json"):
        assert (out / name).stat().st_size > 0, name
