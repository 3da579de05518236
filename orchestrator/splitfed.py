"""SplitFed (v1, Thapa et al. 2020): every data owner trains its own copy of the chain
at the same time; the copies are averaged at the end of each round.

- A round starts from one set of global weights for all segments.
- Each owner trains its own copy of the whole chain for `epochs` epochs on its own
  rows, batches in the configured order (seeded by the owner's turn index, round *
  owners + position, as round robin numbers its turns): its perimeter segments on
  its own worker, its own copy of each middle segment on that middle host (a run
  of its own there, `<run>.<k>`). The owners' Drives run at once; a middle host
  serves all of them.
- Each owner keeps its own optimizer state from round to round.
- At a round's end the orchestrator exports every copy and sets the global
  weights to the mean of the copies weighted by the owners' training rows, for
  every floating-point parameter and buffer; an integer buffer (batch norm's
  num_batches_tracked) takes the first owner's value. Only weights move; no
  owner's rows or labels do.
- Checkpoints are written at each round's end (global weights and every owner's
  optimizer state); --resume continues with the next round.
"""

from __future__ import annotations

import threading
import time

import torch

from splitnn.errors import RunError, WorkerError
from splitnn.orchestrator.batches import drive_batches
from splitnn.orchestrator.segments import SegmentPlacement, initial_states
from splitnn.training import schedule
from splitnn.training.pipeline import plan_stages
from splitnn.wire.compress import wire_format


def average(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict:
    """The weighted mean of some copies' model state (float keys, in float64 before
    casting back); integer tensors take the first copy's value."""
    total = float(sum(weights))
    out = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            out[key] = first.clone()
            continue
        acc = torch.zeros(first.shape, dtype=torch.float64)
        for state, weight in zip(states, weights, strict=True):
            acc += state[key].to(torch.float64) * weight
        out[key] = (acc / total).to(first.dtype)
    return out


def _split(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    model = {k: v for k, v in state.items() if k.startswith("model.")}
    return model, {k: v for k, v in state.items() if k.startswith("optim.")}


class SplitFedRounds:
    """The rounds of one SplitFed run, on the trainer's workers and outputs."""

    def __init__(self, trainer):
        self.trainer = trainer
        config = trainer.config
        self.config = config
        self.owners = list(dict.fromkeys(config.owners))
        self.copies = {
            owner: SegmentPlacement(config, trainer.clients, f"{trainer.run_id}.{k}")
            for k, owner in enumerate(self.owners)
        }
        self.global_states: list[dict] = []
        self.last_optim: dict = {}  # every owner's optimizer state at the last round's end
        self._lock = threading.Lock()

    # ---- loading and saving ----------------------------------------------------

    def load_initial(self) -> None:
        self._load_all(initial_states(self.config), optim={}, replace=False)

    def _load_all(self, global_states: list[dict], optim: dict, replace: bool) -> None:
        """Every owner's copy with the global weights and its own optimizer state."""
        self.global_states = global_states
        for owner, copy in self.copies.items():
            own = optim.get(owner, [{} for _ in global_states])
            states = [{**g, **o} for g, o in zip(global_states, own, strict=True)]
            hosts = self.config.placement(owner)
            copy.load([hosts[s.index] for s in self.config.segments], states, replace=replace)

    def checkpoint_states(self, optim: dict) -> list[dict]:
        """Per segment: the global weights, and each owner k's optimizer state under
        "copies.<k>.optim..."."""
        out = []
        for i, state in enumerate(self.global_states):
            merged = dict(state)
            for k, owner in enumerate(self.owners):
                merged.update({f"copies.{k}.{key}": v for key, v in optim[owner][i].items()})
            out.append(merged)
        return out

    def restore(self, states: list[dict]) -> None:
        """Load every copy from checkpointed states (see checkpoint_states)."""
        global_states = [{k: v for k, v in s.items() if k.startswith("model.")} for s in states]
        optim = {}
        for k, owner in enumerate(self.owners):
            prefix = f"copies.{k}."
            optim[owner] = [
                {key[len(prefix) :]: v for key, v in s.items() if key.startswith(prefix)}
                for s in states
            ]
        self._load_all(global_states, optim, replace=False)

    def cleanup(self) -> None:
        for copy in self.copies.values():
            copy.cleanup()

    # ---- one round -------------------------------------------------------------

    def train_round(self, r: int, metrics, bar) -> None:
        """Every owner's copy for `epochs` epochs at once, then the average."""
        trainer, config = self.trainer, self.config
        stop = threading.Event()
        failures: list[tuple[str, int, int, BaseException]] = []
        started = time.perf_counter()
        threads = [
            threading.Thread(
                target=self._owner_thread,
                args=(k, owner, r, metrics, bar, stop, failures),
                name=f"splitfed-{owner}",
                daemon=True,
            )
            for k, owner in enumerate(self.owners)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        trainer.train_seconds += time.perf_counter() - started
        for owner in self.owners:  # the run's step count moves at the round's end
            rows = trainer.rows_of(owner, config.dataset)
            trainer.cursor.step += schedule.batch_count(rows, config.batch_size) * config.epochs
        if failures:
            owner, epoch, step, err = failures[0]
            if isinstance(err, WorkerError):
                raise RunError(
                    f"{err} (splitfed: owner {owner}, round {r + 1}, epoch {epoch + 1}, "
                    f"step {step} of its copy); outputs so far are in {trainer.out_dir}/; "
                    f"`splitnn train --resume {trainer.out_dir}` goes on from the start of "
                    f"round {r + 1} (the last round's checkpoint)"
                ) from None
            raise err
        exported = {owner: copy.export_all() for owner, copy in self.copies.items()}
        models = {o: [_split(s)[0] for s in states] for o, states in exported.items()}
        optim = {o: [_split(s)[1] for s in states] for o, states in exported.items()}
        rows = [trainer.rows_of(o, config.dataset) for o in self.owners]
        global_states = [
            average([models[o][i] for o in self.owners], rows) for i in range(len(config.segments))
        ]
        self._load_all(global_states, optim, replace=True)
        trainer.cursor.turn = (r + 1) * len(self.owners)
        if config.test_dataset:
            self._evaluate_global(r, metrics)
        self.last_optim = optim

    def _owner_thread(self, k, owner, r, metrics, bar, stop, failures) -> None:
        config, trainer = self.config, self.trainer
        copy = self.copies[owner]
        stages = plan_stages(config.placement(owner))
        rows = trainer.rows_of(owner, config.dataset)
        per_round = schedule.batch_count(rows, config.batch_size) * config.epochs
        step = r * per_round  # this copy's steps so far: batch ids stay unique per run
        epoch = 0
        try:
            for epoch in range(config.epochs):
                if stop.is_set():
                    return
                batches = schedule.batches(
                    config.seed,
                    r * len(self.owners) + k,
                    epoch,
                    rows,
                    config.batch_size,
                    config.shuffle,
                )
                loss_sum = correct = count = 0
                for result in drive_batches(
                    trainer.clients,
                    owner,
                    copy.run_id,
                    stages,
                    config.loss,
                    config.dataset,
                    step + 1,
                    batches,
                    micro_batches=config.micro_batches,
                    chain=config.route == "chain",
                    wire=wire_format(config.wire),
                    quiet=True,  # the owners drive at once: no busy polling
                ):
                    step += 1
                    loss_sum, correct, count = (
                        loss_sum + result.loss,
                        correct + result.correct,
                        count + result.count,
                    )
                    bar.update(1)
                loss = loss_sum / len(batches)
                self._end_epoch(owner, r, epoch, step, loss, correct, count, metrics)
        except BaseException as err:  # the run stops; the first failure is reported
            with self._lock:
                failures.append((owner, epoch, step + 1, err))
            stop.set()

    def _end_epoch(self, owner, r, epoch, step, loss, correct, count, metrics) -> None:
        config, trainer = self.config, self.trainer
        record = {
            "owner": owner,
            "round": r,
            "turn": r,
            "epoch": epoch + 1,
            "step": step,
            "loss": loss,
            "accuracy": correct / count if count else None,
        }
        with self._lock:
            trainer.samples += count
            trainer.final_loss[owner] = loss
            if (epoch + 1) % config.log_every == 0 or epoch + 1 == config.epochs:
                metrics.write(record)
            if trainer.on_epoch is not None:
                trainer.on_epoch(record)

    def _evaluate_global(self, r: int, metrics) -> None:
        """The new global model on every owner's test set (through its copy, which now
        holds the global weights), and pooled over all of them."""
        trainer, config = self.trainer, self.config
        correct = count = 0
        loss_rows = 0.0
        for owner, copy in self.copies.items():
            stages = plan_stages(config.placement(owner))
            test = trainer.evaluate(owner, stages, run_id=copy.run_id)
            trainer.final_test[owner] = test
            rows = trainer.rows_of(owner, config.test_dataset)
            correct += round((test["test_accuracy"] or 0) * rows)
            count += rows
            loss_rows += test["test_loss"] * (1 if config.loss == "sum_squared_error" else rows)
        loss = loss_rows if config.loss == "sum_squared_error" else loss_rows / max(1, count)
        metrics.write(
            {
                "owner": "global",
                "round": r,
                "turn": r,
                "epoch": config.epochs,
                "step": trainer.cursor.step,
                "test_loss": loss,
                "test_accuracy": correct / count if count else None,
            }
        )
