"""One training step (or evaluation batch) through the chain of workers.

Consecutive segments on one host form a stage and run in one call. Activations
go forward stage by stage; the last stage, at the data owner, computes the loss
against its own labels, backpropagates and steps; gradients then go back stage
by stage, each stage stepping its optimizers right after its backward pass.

The steps are written once, as plans that yield the OpStream calls they need
(a Call, a host, and the op); the same plan runs on blocking streams (the
orchestrator relaying tensors) or on an event loop with async ones (a data
owner's worker driving the chain).
"""

from __future__ import annotations

import enum
import inspect
from collections import deque
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any, cast

from splitnn.model.losses import loss_kind, micro_batch_scale, split_rows
from splitnn.transport.stream import AsyncOpStream, OpStream
from splitnn.v1 import worker_pb2
from splitnn.wire.ops import Op, OpKind, Reply


class Call(enum.Enum):
    """What a plan asks of a host's OpStream."""

    SUBMIT = "submit"  # send an op; its answer is read later
    RECEIVE = "receive"  # read the answer to the oldest op not yet answered
    CALL = "call"  # send an op and wait for its answer
    DRAIN = "drain"  # wait for every answer owed; the last one
    EXPECT = "expect"  # arm an own stage's op for the chain to bring its input


# What a plan yields: the call, the host, and the op (None for DRAIN).
PlanStep = tuple[Call, str, Op | None]
Plan = Generator[PlanStep, Reply | None, Any]


@dataclass(frozen=True)
class Stage:
    """Consecutive segments on one host."""

    host: str
    segments: tuple[int, ...]


def plan_stages(placement: list[str]) -> list[Stage]:
    """Group a placement (host per segment) into stages of consecutive segments."""
    stages: list[Stage] = []
    for index, host in enumerate(placement):
        if stages and stages[-1].host == host:
            stages[-1] = Stage(host, stages[-1].segments + (index,))
        else:
            stages.append(Stage(host, (index,)))
    return stages


@dataclass
class StepResult:
    """The loss and accuracy counts of one batch."""

    loss: float
    correct: int
    count: int


def _start(stream, call: Call, op: Op | None):
    """One plan step on a stream: its reply, or an awaitable of it."""
    if call is Call.SUBMIT:
        assert op is not None
        return stream.submit(op)
    if call is Call.CALL:
        assert op is not None
        return stream.call(op)
    if call is Call.RECEIVE:
        return stream.receive()
    if call is Call.EXPECT:
        return stream.expect(op)
    return stream.drain()


class Pipeline:
    """Drives batches through the stages of one owner's placement. `clients` maps each
    host to its OpStream: WorkerClients, or on an event loop AsyncExchangeClients and
    the driving worker's LocalClient."""

    def __init__(
        self,
        clients: Mapping[str, OpStream | AsyncOpStream],
        run_id: str,
        stages: list[Stage],
        loss: str,
        micro_batches: int = 1,
        chain: bool = False,
        wire: int = 0,
    ):
        self.clients = clients
        self.run_id = run_id
        self.stages = stages
        self.loss = loss
        self.loss_kind = loss_kind(loss)
        self.micro_batches = max(1, micro_batches)
        # WireFormat of every Forward and Backward (training.wire)
        self.wire = cast(worker_pb2.WireFormat, wire)
        # Chain forwarding (whole training batches, a driver holding both ends of a
        # chain): see splitnn.services.chain_forward. With three stages it would save
        # no message (owner | B | owner: 4 either way), so it starts at four.
        self.chain = chain and len(stages) >= 4 and stages[0].host == stages[-1].host

    def _forward(
        self,
        batch_id: int,
        dataset: str,
        rows: list[int],
        mode: worker_pb2.ForwardMode,
        with_loss: bool,
        step: bool = False,
        want_output: bool = False,
    ):
        """Run the batch forward stage by stage: the first stage reads the owner's rows,
        the last one (with_loss) meets the owner's labels. Returns the last reply."""
        activation, reply = None, None
        for i, stage in enumerate(self.stages):
            op = self._forward_head(i, batch_id, dataset, rows, mode, with_loss, step=step)
            op.want_output = want_output
            reply = yield Call.CALL, stage.host, Op(OpKind.FORWARD, op, activation)
            activation = reply.tensor
        return reply

    def _forward_head(
        self,
        i: int,
        batch_id: int,
        dataset: str,
        rows: list[int],
        mode: worker_pb2.ForwardMode,
        with_loss: bool,
        step: bool = False,
        micro_batch: int = 0,
        scale: float = 0.0,
    ) -> worker_pb2.ForwardRequest:
        """The ForwardRequest of stage i: the first stage reads the owner's rows, the
        last one (with_loss) meets its labels, backpropagating `scale` times the loss
        (0: the whole loss) and stepping if `step`."""
        op = worker_pb2.ForwardRequest(
            run_id=self.run_id,
            segments=self.stages[i].segments,
            batch_id=batch_id,
            mode=mode,
            micro_batch=micro_batch,
            wire=self.wire,
        )
        if i == 0:
            op.data.dataset = dataset
            op.data.indices.extend(rows)
        if with_loss and i == len(self.stages) - 1:
            op.loss.kind = self.loss_kind
            op.loss.dataset = dataset
            op.loss.indices.extend(rows)
            op.loss.scale = scale
            op.step = step
        return op

    def train_step(self, batch_id: int, dataset: str, rows: list[int]) -> StepResult:
        """Forward, loss, backward and step for one batch of the owner's rows."""
        return self._run(self._train_step(batch_id, dataset, rows))

    async def train_step_async(self, batch_id: int, dataset: str, rows: list[int]) -> StepResult:
        """train_step on an event loop (clients whose methods may be coroutines)."""
        return await self._run_async(self._train_step(batch_id, dataset, rows))

    def evaluate_batch(self, batch_id: int, dataset: str, rows: list[int]) -> StepResult:
        """Loss and accuracy of a batch, keeping no state on any worker."""
        return self._run(self._evaluate_batch(batch_id, dataset, rows))

    async def evaluate_batch_async(self, batch_id: int, dataset: str, rows: list[int]):
        """evaluate_batch on an event loop."""
        return await self._run_async(self._evaluate_batch(batch_id, dataset, rows))

    def predict(self, batch_id: int, dataset: str, rows: list[int]):
        """The chain's outputs for some of the owner's rows (no state kept)."""
        mode = worker_pb2.FORWARD_MODE_EVAL
        plan = self._forward(batch_id, dataset, rows, mode, False, want_output=True)
        return self._run(plan).tensor

    def flush(self) -> None:
        """Wait until every worker has answered every op sent."""
        self._run(self._flush())

    async def flush_async(self) -> None:
        """flush on an event loop."""
        await self._run_async(self._flush())

    def _run(self, plan: Plan):
        """Carry out a plan's calls on blocking streams; return what the plan returns."""
        reply = None
        while True:
            try:
                call, host, op = plan.send(reply)
            except StopIteration as done:
                return done.value
            reply = _start(self.clients[host], call, op)

    async def _run_async(self, plan: Plan):
        """Carry out a plan's calls, awaiting those of event-loop streams."""
        reply = None
        while True:
            try:
                call, host, op = plan.send(reply)
            except StopIteration as done:
                return done.value
            reply = _start(self.clients[host], call, op)
            if inspect.isawaitable(reply):
                reply = await reply

    def _train_step(self, batch_id: int, dataset: str, rows: list[int]):
        if self.micro_batches > 1 and len(rows) > 1:
            return (yield from self._train_step_micro(batch_id, dataset, rows))
        if self.chain:
            return (yield from self._train_step_chained(batch_id, dataset, rows))
        stages, run = self.stages, self.run_id
        # One stage does it all in one call; otherwise the last stage's step waits and
        # overlaps with the backward of the stage before.
        reply = yield from self._forward(
            batch_id, dataset, rows, worker_pb2.FORWARD_MODE_TRAIN, True, step=len(stages) == 1
        )
        loss, grad = reply.message.loss, reply.tensor
        owed = stages[-1] if len(stages) > 1 else None
        for i in range(len(stages) - 2, -1, -1):
            stage = stages[i]
            op = worker_pb2.BackwardRequest(
                run_id=run, segments=stage.segments, batch_id=batch_id, step=True, wire=self.wire
            )
            yield Call.SUBMIT, stage.host, Op(OpKind.BACKWARD, op, grad)
            if owed is not None:
                step = worker_pb2.StepRequest(run_id=run, segments=owed.segments, batch_id=batch_id)
                yield Call.SUBMIT, owed.host, Op(OpKind.STEP, step)
                owed = None
            # Nothing flows back from the first stage: do not wait for its answer; the
            # stream keeps it ordered before this worker's next op.
            if i > 0:
                grad = (yield Call.DRAIN, stage.host, None).tensor
        return StepResult(loss.loss, loss.correct, loss.count)

    def _train_step_chained(self, batch_id: int, dataset: str, rows: list[int]):
        """One batch with chain forwarding: the first stage's output goes to the second
        stage with the rest of the chain; each host passes its output on and, once the
        gradient comes back, backpropagates and steps; the last stage (this driver's,
        armed first) computes the loss; the second stage answers with its input
        gradient and the loss. Then the last stage steps and the first backpropagates."""
        stages, run = self.stages, self.run_id
        train = worker_pb2.FORWARD_MODE_TRAIN
        first, last = stages[0], stages[-1]
        head = self._forward_head(0, batch_id, dataset, rows, train, True)
        activation = (yield Call.CALL, first.host, Op(OpKind.FORWARD, head)).tensor
        final = self._forward_head(len(stages) - 1, batch_id, dataset, rows, train, True)
        yield Call.EXPECT, last.host, Op(OpKind.FORWARD, final)
        head = self._forward_head(1, batch_id, dataset, rows, train, True)
        head.chain.extend(worker_pb2.ChainHop(host=s.host, segments=s.segments) for s in stages[2:])
        reply = yield Call.CALL, stages[1].host, Op(OpKind.FORWARD, head, activation)
        loss = reply.message.loss
        step = worker_pb2.StepRequest(run_id=run, segments=last.segments, batch_id=batch_id)
        yield Call.SUBMIT, last.host, Op(OpKind.STEP, step)
        back = worker_pb2.BackwardRequest(
            run_id=run, segments=first.segments, batch_id=batch_id, step=True
        )
        yield Call.SUBMIT, first.host, Op(OpKind.BACKWARD, back, reply.tensor)
        yield Call.DRAIN, first.host, None
        return StepResult(loss.loss, loss.correct, loss.count)

    def _train_step_micro(self, batch_id: int, dataset: str, rows: list[int]):
        """One batch as micro-batches, fill-drain (GPipe): every micro-batch forward
        through the chain, then every backward in the same order, then one step per
        stage, so that hosts compute at once.

        The forwards go as a wave: at tick t stage i works on micro-batch t - i, and
        each tick feeds the later stages first and the first stage last, so that a
        host that computes in this process (the driving owner's first stage) does so
        while the next host already has its input, not before. Each stream answers
        its ops in order; answers are taken by (stage, micro-batch) and kept until
        wanted, and every answer is read before the next batch."""
        stages, run = self.stages, self.run_id
        parts = split_rows(rows, self.micro_batches)
        scales = [micro_batch_scale(self.loss, len(part), len(rows)) for part in parts]
        train = worker_pb2.FORWARD_MODE_TRAIN
        last, count_m = len(stages) - 1, len(parts)
        sent: dict[str, deque] = {stage.host: deque() for stage in stages}
        answers: dict[tuple, Reply] = {}

        def submit(key: tuple, i: int, op: Op):
            sent[stages[i].host].append(key)
            yield Call.SUBMIT, stages[i].host, op

        def take(key: tuple, i: int):
            """The answer to the op sent under `key` to stage i's host."""
            queue = sent[stages[i].host]
            while key not in answers:
                answers[queue.popleft()] = yield Call.RECEIVE, stages[i].host, None
            return answers.pop(key)

        def forward(i: int, m: int, tensor) -> Op:
            head = self._forward_head(
                i, batch_id, dataset, parts[m], train, True, micro_batch=m, scale=scales[m]
            )
            return Op(OpKind.FORWARD, head, tensor)

        for tick in range(count_m + last):
            for i in [*range(1, last + 1), 0]:
                m = tick - i
                if 0 <= m < count_m:
                    tensor = None if i == 0 else (yield from take(("f", i - 1, m), i - 1)).tensor
                    yield from submit(("f", i, m), i, forward(i, m, tensor))
        loss, correct, count, grads = 0.0, 0, 0, []
        for m in range(count_m):
            reply = yield from take(("f", last, m), last)
            result = reply.message.loss
            loss += result.loss * scales[m]
            correct, count = correct + result.correct, count + result.count
            grads.append(reply.tensor)
        for i in range(last - 1, -1, -1):
            for m in range(count_m):
                if i < last - 1:
                    grads[m] = (yield from take(("b", i + 1, m), i + 1)).tensor
                back = worker_pb2.BackwardRequest(
                    run_id=run,
                    segments=stages[i].segments,
                    batch_id=batch_id,
                    micro_batch=m,
                    wire=self.wire,
                )
                yield from submit(("b", i, m), i, Op(OpKind.BACKWARD, back, grads[m]))
        for stage in stages:
            step = worker_pb2.StepRequest(run_id=run, segments=stage.segments, batch_id=batch_id)
            yield Call.SUBMIT, stage.host, Op(OpKind.STEP, step)
        for host in dict.fromkeys(stage.host for stage in stages):
            yield Call.DRAIN, host, None
        return StepResult(loss, correct, count)

    def _evaluate_batch(self, batch_id: int, dataset: str, rows: list[int]):
        mode = worker_pb2.FORWARD_MODE_EVAL
        reply = yield from self._forward(batch_id, dataset, rows, mode, True)
        loss = reply.message.loss
        return StepResult(loss.loss, loss.correct, loss.count)

    def _flush(self):
        for stage in self.stages:
            yield Call.DRAIN, stage.host, None
