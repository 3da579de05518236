"""Write one train and one test ``.npz`` per data owner, plus a ``summary.json``.

Each file holds ``x`` (float32) and ``y`` (int64), written with ``np.savez`` (no pickle), in
the form a worker's dataset loader reads (``splitnn.data.datasets.load_npz``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from splitnn.data.partition import class_counts, parse_scheme
from splitnn.data.partition import partition as partition_rows
from splitnn.data.readers import load_source, parse_source
from splitnn.errors import DataError

SUMMARY_FILE = "summary.json"
TEST_SEED_OFFSET = 1_000_003
_OWNER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class ShardStats:
    rows: int
    class_counts: list[int]
    file: str


@dataclass
class OwnerStats:
    train: ShardStats
    test: ShardStats


@dataclass
class Summary:
    source: str
    dataset: str
    partition: str
    seed: int
    test_seed: int
    classes: int
    sample_shape: list[int]
    owners: dict[str, OwnerStats] = field(default_factory=dict)
    class_names: list[str] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Summary:
        owners = {
            name: OwnerStats(ShardStats(**o["train"]), ShardStats(**o["test"]))
            for name, o in data["owners"].items()
        }
        return cls(**{**data, "owners": owners})


def check_owner_names(owners: list[str]) -> list[str]:
    """Owner names become file names: letters, digits, ``_ . -``, unique, not empty."""
    owners = [o.strip() for o in owners]
    if not owners or any(not o for o in owners):
        raise DataError("owners must be a non-empty list of non-empty names")
    for o in owners:
        if not _OWNER_NAME.match(o):
            raise DataError(
                f"owner name {o!r} is not allowed: use letters, digits, '_', '.', '-' "
                "(starting with a letter or digit, at most 64 characters)"
            )
    dupes = sorted({o for o in owners if owners.count(o) > 1})
    if dupes:
        raise DataError(f"owner names must be unique; repeated: {', '.join(dupes)}")
    return owners


def _save(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, x=np.ascontiguousarray(x, np.float32), y=np.ascontiguousarray(y, np.int64))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def prepare(
    source: str,
    owners: list[str],
    partition: str,
    out_dir: Path,
    seed: int = 0,
    label_column: str = "label",
    *,
    split_seed: int = 0,
) -> Summary:
    """Load ``source``, partition its train split (with ``seed``) and its test split (with
    ``seed + TEST_SEED_OFFSET``) by the same scheme, and write ``<owner>_train.npz``,
    ``<owner>_test.npz`` and ``summary.json`` into ``out_dir``. ``split_seed`` only matters
    for sources without their own test split (digits, csv, npz without ``x_test``), and is kept
    fixed by default so that different partition seeds divide the same train/test split."""
    owners = check_owner_names(list(owners))
    scheme = parse_scheme(partition)
    src = parse_source(source)
    dataset = load_source(src, label_column=label_column, seed=split_seed)
    test_seed = seed + TEST_SEED_OFFSET
    all_classes = np.arange(dataset.classes)
    shards = {
        "train": partition_rows(dataset.train.y, owners, scheme, seed, classes=all_classes),
        "test": partition_rows(dataset.test.y, owners, scheme, test_seed, classes=all_classes),
    }
    empty = [o for o in owners if shards["train"][o].size == 0]
    if empty:
        raise DataError(
            f"partition {scheme} leaves no training rows for: {', '.join(empty)} "
            f"({len(dataset.train)} training rows for {len(owners)} owners)"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats: dict[str, dict[str, ShardStats]] = {o: {} for o in owners}
    for split_name, split in (("train", dataset.train), ("test", dataset.test)):
        for owner in owners:
            rows = shards[split_name][owner]
            name = f"{owner}_{split_name}.npz"
            _save(out_dir / name, split.x[rows], split.y[rows])
            stats[owner][split_name] = ShardStats(
                int(rows.size), class_counts(split.y, rows, dataset.classes), name
            )
    summary = Summary(
        source=str(src),
        dataset=dataset.name,
        partition=str(scheme),
        seed=int(seed),
        test_seed=int(test_seed),
        classes=int(dataset.classes),
        sample_shape=[int(d) for d in dataset.train.x.shape[1:]],
        owners={o: OwnerStats(**stats[o]) for o in owners},
        class_names=list(dataset.class_names) if dataset.class_names else None,
    )
    tmp = out_dir / f".{SUMMARY_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / SUMMARY_FILE)
    return summary


def format_table(summary: Summary, max_class_columns: int = 20) -> str:
    """Rows and class counts per owner for train and test, as aligned text."""
    k = summary.classes
    show_classes = k <= max_class_columns
    header = ["owner", "split", "rows"]
    if show_classes:
        header += [str(c) for c in range(k)]
    else:
        header += ["classes present", "largest class"]
    lines: list[list[str]] = []
    totals = {"train": np.zeros(k, np.int64), "test": np.zeros(k, np.int64)}
    for owner, st in summary.owners.items():
        for split_name in ("train", "test"):
            shard: ShardStats = getattr(st, split_name)
            counts = np.asarray(shard.class_counts, np.int64)
            totals[split_name] += counts
            lines.append([owner, split_name, str(shard.rows), *_count_cells(counts, show_classes)])
    for split_name in ("train", "test"):
        counts = totals[split_name]
        lines.append(
            ["total", split_name, str(int(counts.sum())), *_count_cells(counts, show_classes)]
        )
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(row[2:], widths[2:], strict=True)]
        return "  ".join(cells).rstrip()

    name = summary.dataset
    if summary.source != name:
        name = f"{name} ({summary.source})"
    title = (
        f"{name}, partition {summary.partition}, "
        f"seed {summary.seed}, {k} classes, sample shape {summary.sample_shape}"
    )
    rule = "-" * len(fmt(header))
    body = [fmt(r) for r in lines]
    n_owner_lines = 2 * len(summary.owners)
    out = [title, fmt(header), rule, *body[:n_owner_lines], rule, *body[n_owner_lines:]]
    if (
        show_classes
        and summary.class_names
        and any(name != str(i) for i, name in enumerate(summary.class_names))
    ):
        out.append("classes: " + ", ".join(f"{i}={n}" for i, n in enumerate(summary.class_names)))
    return "\n".join(out)


def _count_cells(counts: np.ndarray, show_classes: bool) -> list[str]:
    if show_classes:
        return [str(int(c)) for c in counts]
    present = int(np.count_nonzero(counts))
    largest = f"{int(np.argmax(counts))} ({int(counts.max())})" if counts.sum() else "-"
    return [str(present), largest]
