"""Results people can look at: curves.png and a summary table, from metrics.jsonl.

Works on a finished or an interrupted run: it only reads what was logged.
"""

from __future__ import annotations

import threading
from pathlib import Path

from splitnn.orchestrator.outputs import read_metrics


def _import_pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def preload_plotting() -> threading.Thread:
    """Import matplotlib on a background thread (about a second) while training runs,
    mostly waiting on the network, so that plot_curves at the end does not pay it."""
    thread = threading.Thread(target=_import_pyplot, name="preload-matplotlib", daemon=True)
    thread.start()
    return thread


def _x(record: dict, epochs_per_turn: int) -> int:
    return record["turn"] * epochs_per_turn + record["epoch"]


def plot_curves(records: list[dict], path: Path, title: str = "") -> Path:
    """Loss and accuracy against epochs, one line per owner, turns marked."""
    plt = _import_pyplot()

    epochs = max((r["epoch"] for r in records), default=1)
    owners = list(dict.fromkeys(r["owner"] for r in records))
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    series = ((ax_loss, "loss", "test_loss"), (ax_acc, "accuracy", "test_accuracy"))
    for i, owner in enumerate(owners):
        mine = [r for r in records if r["owner"] == owner]
        color = colors[i % len(colors)]
        first_turn = min(r["turn"] for r in mine)
        # One line per turn, so that other owners' turns leave gaps.
        for turn in sorted({r["turn"] for r in mine}):
            rows = [r for r in mine if r["turn"] == turn]
            label = owner if turn == first_turn else None
            for ax, train_key, test_key in series:
                _plot(ax, rows, train_key, epochs, color, label and f"{label} train")
                _plot(ax, rows, test_key, epochs, color, label and f"{label} test", test=True)
    turns = sorted({r["turn"] for r in records})
    for ax in (ax_loss, ax_acc):
        for turn in turns[1:]:
            ax.axvline(turn * epochs + 0.5, color="grey", linestyle=":", linewidth=1)
        # SplitFed: a "turn" is a round, every owner training in it at once.
        ax.set_xlabel("epoch (all turns or rounds, in order; dotted lines: handovers or rounds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log" if _positive([r.get("loss") for r in records]) else "linear")
    ax_acc.set_ylabel("accuracy")
    ax_loss.set_title("loss")
    ax_acc.set_title("accuracy")
    if title:
        fig.suptitle(title)
    # Fixed margins that fit these labels: tight_layout measured every text first, 0.4 s
    # of the demo's 8.
    fig.subplots_adjust(
        left=0.06, right=0.99, bottom=0.12, top=0.86 if title else 0.92, wspace=0.17
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot(ax, rows, key, epochs, color, label, test=False) -> None:
    points = [r for r in rows if r.get(key) is not None]
    if not points:
        return
    style = {"linestyle": "--", "marker": "o", "markersize": 3} if test else {}
    ax.plot(
        [_x(r, epochs) for r in points],
        [r[key] for r in points],
        color=color,
        label=label,
        **style,
    )


def _positive(values) -> bool:
    values = [v for v in values if v is not None]
    return bool(values) and min(values) > 0 and max(values) / min(values) > 20


def summary_rows(records: list[dict]) -> list[dict]:
    """The last record of each owner's last turn (with its latest test figures)."""
    rows = {}
    for record in records:
        owner = record["owner"]
        row = rows.setdefault(owner, {"owner": owner})
        row.update(
            turn=record["turn"], epoch=record["epoch"], step=record["step"], loss=record.get("loss")
        )
        row["accuracy"] = record.get("accuracy")
        if record.get("test_loss") is not None:
            row["test_loss"] = record["test_loss"]
            row["test_accuracy"] = record.get("test_accuracy")
    return list(rows.values())


def format_summary(records: list[dict]) -> str:
    """A text table: per owner, the final train loss/accuracy and test loss/accuracy."""

    def fmt(value, spec):
        return format(value, spec) if value is not None else "-"

    header = ("owner", "step", "train loss", "train acc", "test loss", "test acc")
    lines = ["{:<10} {:>7} {:>11} {:>9} {:>10} {:>9}".format(*header)]
    for row in summary_rows(records):
        lines.append(
            f"{row['owner']:<10} {row['step']:>7} {fmt(row['loss'], '.5f'):>11} "
            f"{fmt(row.get('accuracy'), '.2%'):>9} {fmt(row.get('test_loss'), '.5f'):>10} "
            f"{fmt(row.get('test_accuracy'), '.2%'):>9}"
        )
    return "\n".join(lines)


def report_run(out_dir: Path, title: str = "") -> str:
    """Redraw DIR/curves.png and return the summary table of a run directory."""
    records = read_metrics(Path(out_dir) / "metrics.jsonl")
    if not records:
        raise FileNotFoundError(f"{out_dir}/metrics.jsonl holds no records yet")
    plot_curves(records, Path(out_dir) / "curves.png", title)
    return format_summary(records)
