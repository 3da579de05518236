"""Dividing a dataset's rows among data owners.

Schemes (see :func:`partition`):

* ``iid`` -- a seeded shuffle cut into near-equal shards.
* ``by-label`` -- whole classes per owner: sorted classes dealt round robin.
* ``dirichlet:ALPHA`` -- for each class, the share of each owner drawn from
  Dirichlet(ALPHA, ..., ALPHA); small ALPHA gives skewed owners, large ALPHA near-iid ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from splitnn.errors import DataError

SCHEMES = ("iid", "by-label", "dirichlet:ALPHA")


@dataclass(frozen=True)
class Scheme:
    kind: str  # "iid", "by-label" or "dirichlet"
    alpha: float | None = None

    def __str__(self) -> str:
        return f"dirichlet:{self.alpha:g}" if self.kind == "dirichlet" else self.kind


def parse_scheme(text: str) -> Scheme:
    """Parse ``iid``, ``by-label`` or ``dirichlet:ALPHA`` (ALPHA a positive number)."""
    raw = (text or "").strip()
    low = raw.lower()
    if low == "iid":
        return Scheme("iid")
    if low in ("by-label", "bylabel", "by_label"):
        return Scheme("by-label")
    if low.startswith("dirichlet"):
        _, sep, value = raw.partition(":")
        if not sep or not value.strip():
            raise DataError("partition 'dirichlet' needs a concentration: write dirichlet:ALPHA")
        try:
            alpha = float(value)
        except ValueError:
            raise DataError(f"dirichlet ALPHA must be a number, got {value.strip()!r}") from None
        if not math.isfinite(alpha) or alpha <= 0:
            raise DataError(f"dirichlet ALPHA must be a positive finite number, got {alpha}")
        return Scheme("dirichlet", alpha)
    raise DataError(f"unknown partition {raw!r}; expected one of: {', '.join(SCHEMES)}")


def _check_owners(owners: list[str]) -> list[str]:
    owners = list(owners)
    if not owners:
        raise DataError("need at least one owner")
    for o in owners:
        if not isinstance(o, str) or not o:
            raise DataError(f"owner names must be non-empty strings, got {o!r}")
    dupes = sorted({o for o in owners if owners.count(o) > 1})
    if dupes:
        raise DataError(f"owner names must be unique; repeated: {', '.join(dupes)}")
    return owners


def partition(
    labels: np.ndarray,
    owners: list[str],
    scheme: str | Scheme,
    seed: int,
    *,
    classes: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Row indices (sorted int64) for each owner. The shards are disjoint and together hold
    every row exactly once; the same inputs and seed always give the same result.

    ``classes`` (``by-label`` only) is the full list of classes to deal round robin; by
    default the classes present in ``labels``. Passing the dataset's classes keeps each
    class with the same owner in a train and a test split even when one lacks a class."""
    owners = _check_owners(owners)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must be 1-D, got shape {labels.shape}")
    spec = parse_scheme(scheme) if isinstance(scheme, str) else scheme
    rng = np.random.default_rng(seed)
    if spec.kind == "iid":
        shards = np.array_split(rng.permutation(labels.shape[0]), len(owners))
    elif spec.kind == "by-label":
        shards = _by_label(labels, len(owners), classes)
    elif spec.kind == "dirichlet":
        shards = _dirichlet(labels, len(owners), spec.alpha, rng)
    else:  # pragma: no cover - parse_scheme only makes the three kinds
        raise DataError(f"unknown partition kind {spec.kind!r}")
    return {o: np.sort(np.asarray(s, dtype=np.int64)) for o, s in zip(owners, shards, strict=True)}


def _by_label(labels: np.ndarray, k: int, classes: np.ndarray | None) -> list[np.ndarray]:
    classes = np.unique(labels) if classes is None else np.unique(np.asarray(classes))
    missing = np.setdiff1d(np.unique(labels), classes)
    if missing.size:
        raise DataError(f"labels hold classes not in the class list: {missing.tolist()}")
    if labels.size and classes.size < k:
        raise DataError(
            f"by-label needs at least as many classes as owners: {classes.size} classes, {k} owners"
        )
    shards = []
    for i in range(k):
        mine = classes[i::k]
        shards.append(np.flatnonzero(np.isin(labels, mine)))
    return shards


def _dirichlet(labels: np.ndarray, k: int, alpha: float, rng) -> list[np.ndarray]:
    buckets: list[list[np.ndarray]] = [[] for _ in range(k)]
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        shares = rng.dirichlet(np.full(k, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * rows.size).astype(np.int64)
        for owner, part in enumerate(np.split(rows, cuts)):
            buckets[owner].append(part)
    shards = [np.concatenate(b) if b else np.empty(0, np.int64) for b in buckets]
    return _fill_empty(shards, labels)


def _fill_empty(shards: list[np.ndarray], labels: np.ndarray) -> list[np.ndarray]:
    """Give each empty owner one row taken from the largest owner's most common class,
    while there are enough rows to go round. Deterministic (ties go to the lowest index)."""
    shards = [np.asarray(s, dtype=np.int64) for s in shards]
    if sum(s.size for s in shards) < len(shards):
        return shards
    for i in range(len(shards)):
        if shards[i].size:
            continue
        donor = int(np.argmax([s.size for s in shards]))
        values, counts = np.unique(labels[shards[donor]], return_counts=True)
        cls = values[int(np.argmax(counts))]
        pos = int(np.flatnonzero(labels[shards[donor]] == cls)[-1])
        shards[i] = shards[donor][pos : pos + 1]
        shards[donor] = np.delete(shards[donor], pos)
    return shards


def class_counts(labels: np.ndarray, rows: np.ndarray, classes: int) -> list[int]:
    """How many of ``rows`` fall in each class ``0..classes-1``."""
    return np.bincount(np.asarray(labels)[rows], minlength=classes).astype(int).tolist()
