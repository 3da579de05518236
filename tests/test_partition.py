"""Partitions of rows among data owners: disjoint, complete, seeded, and shaped by scheme."""

from __future__ import annotations

import numpy as np
import pytest

from splitnn.data.partition import Scheme, class_counts, parse_scheme, partition

OWNERS = ["alice", "bob", "claire"]
SCHEMES = ["iid", "by-label", "dirichlet:0.5", "dirichlet:0.05", "dirichlet:100"]


def labels_10(n_per_class: int = 60, seed: int = 0) -> np.ndarray:
    labels = np.repeat(np.arange(10), n_per_class)
    return np.random.default_rng(seed).permutation(labels)


def assert_disjoint_and_complete(shards: dict[str, np.ndarray], n: int) -> None:
    together = np.concatenate(list(shards.values()))
    assert together.dtype == np.int64
    assert together.size == n, "rows lost or duplicated"
    np.testing.assert_array_equal(np.sort(together), np.arange(n))
    for rows in shards.values():
        np.testing.assert_array_equal(rows, np.sort(rows))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_disjoint_complete_and_keyed_by_owner(scheme, seed):
    labels = labels_10()
    shards = partition(labels, OWNERS, scheme, seed)
    assert list(shards) == OWNERS
    assert_disjoint_and_complete(shards, labels.size)
    assert all(rows.size > 0 for rows in shards.values())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_deterministic_for_same_seed(scheme):
    labels = labels_10()
    a = partition(labels, OWNERS, scheme, 7)
    b = partition(labels.copy(), list(OWNERS), scheme, 7)
    for owner in OWNERS:
        np.testing.assert_array_equal(a[owner], b[owner])


@pytest.mark.parametrize("scheme", ["iid", "dirichlet:0.5", "dirichlet:100"])
def test_different_seed_gives_different_partition(scheme):
    labels = labels_10()
    a = partition(labels, OWNERS, scheme, 1)
    b = partition(labels, OWNERS, scheme, 2)
    assert any(not np.array_equal(a[o], b[o]) for o in OWNERS)


def test_iid_near_equal_shards_with_mixed_classes():
    labels = labels_10(n_per_class=10)  # 100 rows over 3 owners
    shards = partition(labels, OWNERS, "iid", 0)
    assert sorted(r.size for r in shards.values()) == [33, 33, 34]
    for rows in shards.values():
        assert np.unique(labels[rows]).size >= 8


def test_by_label_gives_whole_classes_round_robin():
    labels = labels_10()
    shards = partition(labels, OWNERS, "by-label", 0)
    owned = {o: set(np.unique(labels[rows]).tolist()) for o, rows in shards.items()}
    assert owned == {"alice": {0, 3, 6, 9}, "bob": {1, 4, 7}, "claire": {2, 5, 8}}
    for o, rows in shards.items():
        assert rows.size == 60 * len(owned[o])  # every row of each owned class
    # seed plays no part: whole classes are dealt in sorted order
    other = partition(labels, OWNERS, "by-label", 99)
    for o in OWNERS:
        np.testing.assert_array_equal(shards[o], other[o])


def test_by_label_with_explicit_class_list_keeps_owners_stable():
    test_labels = np.array([0, 2, 2, 3, 4, 4])  # class 1 missing from this split
    shards = partition(test_labels, OWNERS, "by-label", 0, classes=np.arange(5))
    assert set(test_labels[shards["alice"]].tolist()) == {0, 3}
    assert shards["bob"].tolist() == [4, 5]  # class 4 (class 1 has no rows here)
    assert set(test_labels[shards["claire"]].tolist()) == {2}
    with pytest.raises(ValueError, match="not in the class list"):
        partition(test_labels, OWNERS, "by-label", 0, classes=np.arange(3))


def test_by_label_needs_enough_classes():
    with pytest.raises(ValueError, match="2 classes, 3 owners"):
        partition(np.array([0, 1, 0, 1]), OWNERS, "by-label", 0)


def skew(labels: np.ndarray, shards: dict[str, np.ndarray]) -> float:
    """Mean over owners of the share of their largest class (1.0 = a single class)."""
    shares = []
    for rows in shards.values():
        counts = np.bincount(labels[rows], minlength=10)
        shares.append(counts.max() / max(1, counts.sum()))
    return float(np.mean(shares))


def test_smaller_alpha_gives_more_skew():
    labels = labels_10(n_per_class=200)
    owners = [f"o{i}" for i in range(5)]
    mean_skew = {}
    for alpha in (0.05, 1.0, 1000.0):
        values = [
            skew(labels, partition(labels, owners, f"dirichlet:{alpha}", s)) for s in range(8)
        ]
        mean_skew[alpha] = float(np.mean(values))
    assert mean_skew[0.05] > mean_skew[1.0] > mean_skew[1000.0]
    assert mean_skew[1000.0] < 0.15  # near iid: ~0.1 per class
    assert mean_skew[0.05] > 0.4


def test_dirichlet_keeps_owners_non_empty_when_possible():
    labels = np.zeros(12, dtype=np.int64)  # one class: a small alpha would starve owners
    owners = [f"o{i}" for i in range(6)]
    for seed in range(20):
        shards = partition(labels, owners, "dirichlet:0.01", seed)
        assert_disjoint_and_complete(shards, labels.size)
        assert all(rows.size > 0 for rows in shards.values())


def test_fewer_rows_than_owners():
    labels = np.array([0, 1])
    for scheme in ("iid", "dirichlet:1"):
        shards = partition(labels, OWNERS, scheme, 0)
        assert_disjoint_and_complete(shards, 2)
        assert sorted(r.size for r in shards.values()) == [0, 1, 1]


def test_empty_labels():
    shards = partition(np.array([], dtype=np.int64), OWNERS, "iid", 0)
    assert all(r.size == 0 for r in shards.values())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("iid", Scheme("iid")),
        (" IID ", Scheme("iid")),
        ("by-label", Scheme("by-label")),
        ("dirichlet:0.3", Scheme("dirichlet", 0.3)),
        ("dirichlet:1e-2", Scheme("dirichlet", 0.01)),
    ],
)
def test_parse_scheme(text, expected):
    assert parse_scheme(text) == expected
    assert str(parse_scheme(str(expected))) == str(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "unknown partition"),
        ("random", "unknown partition 'random'"),
        ("dirichlet", "needs a concentration"),
        ("dirichlet:", "needs a concentration"),
        ("dirichlet:abc", "must be a number"),
        ("dirichlet:0", "positive"),
        ("dirichlet:-2", "positive"),
        ("dirichlet:inf", "positive finite"),
        ("dirichlet:nan", "positive finite"),
    ],
)
def test_parse_scheme_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_scheme(text)


def test_owner_and_label_validation():
    labels = labels_10()
    with pytest.raises(ValueError, match="at least one owner"):
        partition(labels, [], "iid", 0)
    with pytest.raises(ValueError, match="repeated: bob"):
        partition(labels, ["bob", "alice", "bob"], "iid", 0)
    with pytest.raises(ValueError, match="1-D"):
        partition(labels.reshape(20, -1), OWNERS, "iid", 0)


def test_class_counts():
    labels = np.array([0, 2, 2, 1, 2])
    assert class_counts(labels, np.array([1, 2, 3]), 4) == [0, 1, 2, 0]
