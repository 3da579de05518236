"""`prepare`: per-owner train/test .npz files, summary.json, the table, and the CLI hook."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from splitnn.data.prepare import (
    SUMMARY_FILE,
    TEST_SEED_OFFSET,
    Summary,
    format_table,
    prepare,
)
from splitnn.data.readers import load_source
from splitnn.orchestrator import cli_data

OWNERS = ["alice", "bob", "claire"]


@pytest.fixture
def npz_source(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 4)).astype(np.float32)
    x[:, 0] = np.arange(90)  # a row id, to follow rows through the partition
    y = np.arange(90) % 5
    x_test = rng.normal(size=(30, 4)).astype(np.float32)
    x_test[:, 0] = 1000 + np.arange(30)
    y_test = np.arange(30) % 5
    path = tmp_path / "toy.npz"
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return path


def read_owner(out, owner, split):
    with np.load(out / f"{owner}_{split}.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["x", "y"]
        return npz["x"], npz["y"]


@pytest.mark.parametrize("scheme", ["iid", "by-label", "dirichlet:0.3"])
def test_prepare_writes_disjoint_complete_shards(npz_source, tmp_path, scheme):
    out = tmp_path / "out"
    summary = prepare(f"npz:{npz_source}", OWNERS, scheme, out, seed=4)
    source = load_source(f"npz:{npz_source}")
    for split, whole in (("train", source.train), ("test", source.test)):
        xs, ys = zip(*(read_owner(out, o, split) for o in OWNERS), strict=True)
        for x, y in zip(xs, ys, strict=True):
            assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape[1:] == (4,)
            # each row keeps its own label
            np.testing.assert_array_equal(y, whole.y[x[:, 0].astype(int) % 1000])
        ids = np.sort(np.concatenate([x[:, 0] for x in xs]))
        np.testing.assert_array_equal(ids, np.sort(whole.x[:, 0]))
        for o, y in zip(OWNERS, ys, strict=True):
            stats = getattr(summary.owners[o], split)
            assert stats.rows == y.size
            assert stats.class_counts == np.bincount(y, minlength=5).tolist()
            assert stats.file == f"{o}_{split}.npz"
    if scheme == "by-label":
        for o in OWNERS:
            _, y_train = read_owner(out, o, "train")
            _, y_test = read_owner(out, o, "test")
            assert set(y_test.tolist()) == set(y_train.tolist())  # same classes in both


def test_summary_json(npz_source, tmp_path):
    out = tmp_path / "out"
    summary = prepare(f"npz:{npz_source}", OWNERS, "dirichlet:1", out, seed=9)
    data = json.loads((out / "summary.json").read_text())
    assert data["source"] == f"npz:{npz_source}"
    assert data["partition"] == "dirichlet:1" and data["seed"] == 9
    assert data["test_seed"] == 9 + TEST_SEED_OFFSET
    assert data["classes"] == 5 and data["sample_shape"] == [4]
    assert list(data["owners"]) == OWNERS
    assert sum(o["train"]["rows"] for o in data["owners"].values()) == 90
    assert sum(o["test"]["rows"] for o in data["owners"].values()) == 30
    assert data["owners"]["bob"]["test"]["class_counts"] == summary.owners["bob"].test.class_counts
    assert Summary.from_dict(json.loads((out / SUMMARY_FILE).read_text())) == summary


def test_prepare_is_deterministic_and_seeded(npz_source, tmp_path):
    a = prepare(f"npz:{npz_source}", OWNERS, "iid", tmp_path / "a", seed=1)
    b = prepare(f"npz:{npz_source}", OWNERS, "iid", tmp_path / "b", seed=1)
    prepare(f"npz:{npz_source}", OWNERS, "iid", tmp_path / "c", seed=2)
    assert a.owners == b.owners
    for o in OWNERS:
        for split in ("train", "test"):
            xa, _ = read_owner(tmp_path / "a", o, split)
            xb, _ = read_owner(tmp_path / "b", o, split)
            np.testing.assert_array_equal(xa, xb)
    differs = [
        not np.array_equal(
            read_owner(tmp_path / "a", o, "train")[0], read_owner(tmp_path / "c", o, "train")[0]
        )
        for o in OWNERS
    ]
    assert any(differs)


def test_prepare_digits_and_table(tmp_path):
    summary = prepare("digits", OWNERS, "by-label", tmp_path / "d")
    assert summary.dataset == "digits" and summary.sample_shape == [1, 8, 8]
    x, y = read_owner(tmp_path / "d", "bob", "train")
    assert x.shape[1:] == (1, 8, 8) and set(np.unique(y).tolist()) == {1, 4, 7}
    table = format_table(summary)
    lines = table.splitlines()
    assert lines[0].startswith("digits, partition by-label, seed 0, 10 classes")
    header = lines[1].split()
    assert header == ["owner", "split", "rows", *[str(c) for c in range(10)]]
    rows = {(ln.split()[0], ln.split()[1]): ln.split()[2:] for ln in lines if ln[:1].isalpha()}
    total_train = int(rows[("total", "train")][0])
    total_test = int(rows[("total", "test")][0])
    assert total_train + total_test == 1797
    assert sum(int(rows[(o, "train")][0]) for o in OWNERS) == total_train
    bob_train = [int(v) for v in rows[("bob", "train")][1:]]
    assert bob_train == summary.owners["bob"].train.class_counts
    assert [i for i, v in enumerate(bob_train) if v] == [1, 4, 7]


def test_format_table_many_classes(tmp_path):
    x = np.arange(200, dtype=np.float32).reshape(100, 2)
    np.savez(tmp_path / "wide.npz", x=x, y=np.arange(100) % 40)
    summary = prepare(f"npz:{tmp_path / 'wide.npz'}", ["a", "b"], "iid", tmp_path / "o")
    table = format_table(summary)
    assert "classes present" in table and "largest class" in table
    assert "wide (npz:" in table.splitlines()[0]


def test_prepare_rejects_bad_input(npz_source, tmp_path):
    with pytest.raises(ValueError, match="not allowed"):
        prepare(f"npz:{npz_source}", ["../evil"], "iid", tmp_path / "o")
    with pytest.raises(ValueError, match="repeated: a"):
        prepare(f"npz:{npz_source}", ["a", "a"], "iid", tmp_path / "o")
    with pytest.raises(ValueError, match="unknown partition"):
        prepare(f"npz:{npz_source}", OWNERS, "shuffle", tmp_path / "o")
    with pytest.raises(ValueError, match="unknown data source"):
        prepare("imagenet", OWNERS, "iid", tmp_path / "o")
    np.savez(tmp_path / "tiny.npz", x=np.ones((3, 1)), y=np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="leaves no training rows"):
        prepare(f"npz:{tmp_path / 'tiny.npz'}", ["a", "b", "c", "d"], "iid", tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing written on errors found before writing


def test_prepared_files_load_in_the_worker_dataset_reader(npz_source, tmp_path):
    datasets = pytest.importorskip("splitnn.data.datasets")
    prepare(f"npz:{npz_source}", OWNERS, "iid", tmp_path / "w")
    ds = datasets.load_npz("alice", tmp_path / "w" / "alice_train.npz")
    assert ds.rows == 30 and ds.x.shape[1] == 4


# --------------------------------------------------------------------------- CLI


def test_cli_prepare(npz_source, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "data",
        "prepare",
        f"npz:{npz_source}",
        "--owners",
        "alice, bob,claire",
        "--partition",
        "dirichlet:0.5",
        "--out",
        str(out),
        "--seed",
        "3",
    ]
    assert cli_data.main(argv) == 0
    printed = capsys.readouterr().out
    assert "partition dirichlet:0.5, seed 3" in printed and "claire" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{o}_{s}.npz" for o in OWNERS for s in ("train", "test")] + ["summary.json"]
    )


def test_cli_label_column(tmp_path, capsys):
    lines = ["f,kind"] + [f"{i},{'ab'[i % 2]}" for i in range(20)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    argv = ["data", "prepare", f"csv:{tmp_path / 'd.csv'}", "--owners", "a,b", "--out"]
    argv += [str(tmp_path / "o"), "--label-column", "kind", "--partition", "by-label"]
    assert cli_data.main(argv) == 0
    assert "classes: 0=a, 1=b" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["imagenet", "--owners", "a,b"], "unknown data source 'imagenet'"),
        (["digits", "--owners", "a,,b"], "--owners must be comma-separated"),
        (["digits", "--owners", "a,b", "--partition", "dirichlet:x"], "must be a number"),
        (["npz:/no/such/file.npz", "--owners", "a,b"], "no such file"),
        (["cifar10:/no/such/dir", "--owners", "a,b"], "no such file or directory"),
        (["csv:/no/such.csv", "--owners", "a"], "no such file"),
    ],
)
def test_cli_errors_exit_2_without_traceback(tmp_path, capsys, args, message):
    code = cli_data.main(["data", "prepare", *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("splitnn data prepare: error: ") and message in err
    assert "Traceback" not in err


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_data.main(["data", "prepare", "digits", "--out", str(tmp_path)])  # no --owners
    assert exc.value.code == 2
    assert "--owners" in capsys.readouterr().err


def test_register_sets_func_on_a_host_parser():
    parser = argparse.ArgumentParser(prog="splitnn")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_data.register(sub)
    args = parser.parse_args(["data", "prepare", "mnist", "--owners", "a", "--out", "o"])
    assert args.func is cli_data.run_data
    assert (args.source, args.partition, args.seed, args.label_column) == (
        "mnist",
        "iid",
        0,
        "label",
    )


def test_main_cli_dispatches_to_data(npz_source, tmp_path, capsys):
    cli = pytest.importorskip("splitnn.orchestrator.cli")
    out = tmp_path / "main"
    argv = ["data", "prepare", f"npz:{npz_source}", "--owners", "a,b", "--out", str(out)]
    assert cli.main(argv) == 0
    assert (out / "a_train.npz").is_file() and "total" in capsys.readouterr().out
