"""Micro-batch pipelining (training.micro_batches): each batch cut into micro-batches
that flow through the chain one after another, gradients accumulated, one step per
batch; the result equals one process accumulating the same micro-batches."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitnn.errors import ConfigError
from splitnn.model.losses import micro_batch_scale, split_rows
from splitnn.orchestrator.config import load_config
from splitnn.orchestrator.reference import max_weight_difference, train_reference
from tests import jobs
from tests.test_equivalence import assert_equals_reference

ROOT = Path(__file__).resolve().parent.parent


def with_training(path: Path, directory: Path, **fields) -> Path:
    """The config at `path` with more [training] fields, as a new file in `directory`."""
    extra = "".join(f"{k} = {v}\n" for k, v in fields.items())
    text = path.read_text().replace("[training]\n", f"[training]\n{extra}", 1)
    out = directory / f"{path.stem}-{'-'.join(map(str, fields.values()))}.toml"
    out.write_text(text)
    return out


def test_rows_split_in_order_into_non_empty_parts():
    assert split_rows(list(range(10)), 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert split_rows([5, 6], 4) == [[5], [6]]
    assert split_rows([1, 2, 3], 1) == [[1, 2, 3]]


def test_mean_losses_scale_by_share_and_sums_do_not():
    assert micro_batch_scale("cross_entropy", 3, 12) == 0.25
    assert micro_batch_scale("sum_squared_error", 3, 12) == 1.0


def test_micro_batches_with_batch_norm_in_training_are_refused(tmp_path):
    path = with_training(jobs.cnn_job(tmp_path), tmp_path, micro_batches=2)
    text = path.read_text()
    if "BatchNorm" not in text:
        pytest.skip("the CNN job has no batch norm")
    with pytest.raises(ConfigError, match="batch norm"):
        load_config(path)


def test_micro_batches_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="micro_batches"):
        load_config(with_training(ROOT / "examples" / "seed.toml", tmp_path, micro_batches=0))


@pytest.mark.slow
@pytest.mark.parametrize("flags", [(), ("--relay",)], ids=["owner-drives", "relay"])
def test_mlp_with_micro_batches_equals_one_process_accumulating_them(tmp_path, flags):
    # cross_entropy, a mean loss: batches of 32 (and a last one of 8) in 3 micro-batches,
    # nesterov momentum, two owners handing over, two rounds.
    plain = jobs.mlp_job(tmp_path)
    micro = with_training(plain, tmp_path, micro_batches=3)

    split = assert_equals_reference(micro, tmp_path / "out", *flags)

    # The micro-batches' gradients add up to the batch's: close to whole-batch training.
    whole, _ = train_reference(load_config(plain))
    assert max_weight_difference(split, whole.state_dict()) <= 1e-4


@pytest.mark.slow
def test_seed_job_in_micro_batches_through_the_five_way_chain(tmp_path):
    # Summed squared error over 16 rows as 6 + 5 + 5, through owner | alice | bob |
    # claire | owner: every middle host holds three micro-batches in flight.
    config = with_training(ROOT / "examples" / "seed.toml", tmp_path, micro_batches=3)
    split = assert_equals_reference(config, tmp_path / "out")
    whole, _ = train_reference(load_config(ROOT / "examples" / "seed.toml"))
    assert max_weight_difference(split, whole.state_dict()) <= 1e-4
