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
- Checkpoints: at each round's end, and with checkpoint_every = N within a round
  too: the owners then train in phases of N steps each (all of them, then a
  checkpoint of every copy, then the next N), so that a checkpoint is one
  consistent point of every copy. --resume goes on from the last one.
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
        # Where the round in progress stands: the steps of every copy trained in it
        # (0 at a round's start), and each owner's sums over its epoch so far (loss,
        # correct, count, batches). Checkpointed.
        self.done = 0
        self.sums = {owner: [0.0, 0, 0, 0] for owner in self.owners}
        self._lock = threading.Lock()

    # ---- loading and saving ----------------------------------------------------

    def load_initial(self) -> None:
        self.global_states = initial_states(self.config)
        for owner in self.owners:
            self._load(owner, self.global_states, replace=False)

    def _load(self, owner: str, states: list[dict], replace: bool) -> None:
        hosts = self.config.placement(owner)
        self.copies[owner].load([hosts[s.index] for s in self.config.segments], states, replace)

    def checkpoint_states(self) -> tuple[list[dict], dict]:
        """Per segment, every owner k's copy (weights and optimizer state) under
        "copies.<k>."; and the progress within the round, for the checkpoint."""
        states: list[dict] = [{} for _ in self.config.segments]
        for k, owner in enumerate(self.owners):
            for i, state in enumerate(self.copies[owner].export_all()):
                states[i].update({f"copies.{k}.{key}": v for key, v in state.items()})
        return states, {"splitfed": {"done": self.done, "sums": self.sums}}

    def restore(self, states: list[dict], extra: dict) -> None:
        """Load every copy from checkpointed states (see checkpoint_states)."""
        for k, owner in enumerate(self.owners):
            prefix = f"copies.{k}."
            own = [
                {key[len(prefix) :]: v for key, v in s.items() if key.startswith(prefix)}
                for s in states
            ]
            if not all(own):
                raise RunError(f"the checkpoint holds no copy for owner {owner}")
            self._load(owner, own, replace=False)
        progress = extra.get("splitfed", {})
        self.done = progress.get("done", 0)
        self.sums.update(progress.get("sums", {}))

    def cleanup(self) -> None:
        for copy in self.copies.values():
            copy.cleanup()

    # ---- one round -------------------------------------------------------------

    def _round_batches(self, k: int, owner: str, r: int) -> list[tuple[int, int, int, list]]:
        """The owner's batches of round r as (epoch, batch, batches in epoch, rows)."""
        config = self.config
        rows = self.trainer.rows_of(owner, config.dataset)
        out = []
        for epoch in range(config.epochs):
            batches = schedule.batches(
                config.seed,
                r * len(self.owners) + k,
                epoch,
                rows,
                config.batch_size,
                config.shuffle,
            )
            out += [(epoch, b, len(batches), batch) for b, batch in enumerate(batches)]
        return out

    def train_round(self, r: int, metrics, bar) -> None:
        """Every owner's copy for `epochs` epochs at once, in phases of checkpoint_every
        steps (one phase without it), then the average."""
        trainer, config = self.trainer, self.config
        plans = {o: self._round_batches(k, o, r) for k, o in enumerate(self.owners)}
        longest = max(len(p) for p in plans.values())
        size = config.checkpoint_every or longest
        while self.done < longest:
            start = self.done
            self._phase(r, plans, start, start + size, metrics, bar)
            self.done = start + size
            if self.done < longest:
                trainer.checkpoint()
        self.done = 0
        exported = {owner: copy.export_all() for owner, copy in self.copies.items()}
        rows = [trainer.rows_of(o, config.dataset) for o in self.owners]
        self.global_states = [
            average(
                [
                    {k: v for k, v in exported[o][i].items() if k.startswith("model.")}
                    for o in self.owners
                ],
                rows,
            )
            for i in range(len(config.segments))
        ]
        for owner in self.owners:  # the global weights, each with its own optimizer state
            own = [
                {**g, **{k: v for k, v in s.items() if k.startswith("optim.")}}
                for g, s in zip(self.global_states, exported[owner], strict=True)
            ]
            self._load(owner, own, replace=True)
        trainer.cursor.turn = (r + 1) * len(self.owners)
        if config.test_dataset:
            self._evaluate_global(r, metrics)

    def _phase(self, r, plans, start, end, metrics, bar) -> None:
        trainer = self.trainer
        stop = threading.Event()
        failures: list[tuple[str, int, int, BaseException]] = []
        began = time.perf_counter()
        threads = [
            threading.Thread(
                target=self._owner_thread,
                args=(k, owner, r, plans[owner], start, end, metrics, bar, stop, failures),
                name=f"splitfed-{owner}",
                daemon=True,
            )
            for k, owner in enumerate(self.owners)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        trainer.train_seconds += time.perf_counter() - began
        trainer.cursor.step += sum(len(p[start:end]) for p in plans.values())
        if failures:
            owner, epoch, step, err = failures[0]
            if isinstance(err, WorkerError):
                raise RunError(
                    f"{err} (splitfed: owner {owner}, round {r + 1}, epoch {epoch + 1}, "
                    f"step {step} of its copy); outputs so far are in {trainer.out_dir}/; "
                    f"`splitnn train --resume {trainer.out_dir}` goes on from the last "
                    "checkpoint (the start of this round, or its last checkpoint_every step)"
                ) from None
            raise err

    def _owner_thread(self, k, owner, r, plan, start, end, metrics, bar, stop, failures) -> None:
        config = self.config
        stages = plan_stages(config.placement(owner))
        base = r * len(plan) + start  # this copy's steps so far: batch ids stay unique
        todo = plan[start:end]
        epoch, done = (todo[0][0] if todo else 0), 0
        try:
            # One Drive per epoch (or the part of it in this phase).
            while done < len(todo) and not stop.is_set():
                epoch = todo[done][0]
                part = [item for item in todo[done:] if item[0] == epoch]
                results = drive_batches(
                    self.trainer.clients,
                    owner,
                    self.copies[owner].run_id,
                    stages,
                    config.loss,
                    config.dataset,
                    base + done + 1,
                    [item[3] for item in part],
                    micro_batches=config.micro_batches,
                    chain=config.route == "chain",
                    wire=wire_format(config.wire),
                    quiet=True,  # the owners drive at once: no busy polling
                )
                for (epoch, batch, n_batches, _), result in zip(part, results, strict=True):
                    done += 1
                    bar.update(1)
                    self._add(owner, r, epoch, batch, n_batches, base + done, result, metrics)
        except BaseException as err:  # the run stops; the first failure is reported
            with self._lock:
                failures.append((owner, epoch, base + done + 1, err))
            stop.set()

    def _add(self, owner, r, epoch, batch, n_batches, step, result, metrics) -> None:
        """One batch's result into the owner's epoch sums; the epoch's record at its end."""
        config, trainer = self.config, self.trainer
        with self._lock:
            sums = self.sums[owner]
            if batch == 0:
                sums[:] = [0.0, 0, 0, 0]
            sums[0] += result.loss
            sums[1] += result.correct
            sums[2] += result.count
            sums[3] += 1
            trainer.samples += result.count
            if batch < n_batches - 1:
                return
            loss = sums[0] / sums[3]
            record = {
                "owner": owner,
                "round": r,
                "turn": r,
                "epoch": epoch + 1,
                "step": step,
                "loss": loss,
                "accuracy": sums[1] / sums[2] if sums[2] else None,
            }
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
