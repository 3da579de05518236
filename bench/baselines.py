"""Baselines the split-learning benchmark compares against.

* :func:`run_local` -- the whole network in one process, plain PyTorch.
* :func:`run_rpc` -- the same split over processes with ``torch.distributed.rpc`` and
  distributed autograd, the standard PyTorch way to do split learning.

Both return ``{"samples_per_s": float, "steps": int, "seconds": float}`` measured over
``steps`` training steps after ``warmup`` untimed ones; with ``return_state=True`` the dict
also has ``"state"``: the final weights as ``{"<segment>.<param name>": tensor}``, i.e. the
keys of ``nn.Sequential(*segments).state_dict()``. Both run ``warmup + steps`` optimizer
steps in total, on mini-batches taken in order, so for the same arguments they train the
same weights.

Run ``python -m bench.baselines`` for a table of both baselines on both jobs.
"""

from __future__ import annotations

import argparse
import os
import queue
import socket
import statistics
import time
import traceback
import warnings
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import nn

from bench.models import JOBS, BenchJob

# --------------------------------------------------------------------------------------------
# local
# --------------------------------------------------------------------------------------------


def _result(steps: int, batch_size: int, seconds: float) -> dict[str, Any]:
    return {
        "samples_per_s": steps * batch_size / seconds if seconds > 0 else float("inf"),
        "steps": steps,
        "seconds": seconds,
    }


def run_local(
    job: BenchJob,
    steps: int,
    warmup: int = 10,
    threads: int = 1,
    return_state: bool = False,
) -> dict[str, Any]:
    """Train ``nn.Sequential(*segments)`` in this process for ``warmup + steps`` steps.

    ``threads`` sets ``torch.set_num_threads`` for the run (restored afterwards); the default of
    one matches the one-thread worker processes of the distributed runs.
    """
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = nn.Sequential(*job.build_segments())
        opt = job.make_optimizer(model.parameters())
        batches = job.batches()

        def step(i: int) -> None:
            x, y = batches[i % len(batches)]
            opt.zero_grad(set_to_none=True)
            loss = job.loss_fn(model(x), y)
            loss.backward()
            opt.step()

        for i in range(warmup):
            step(i)
        t0 = time.perf_counter()
        for i in range(warmup, warmup + steps):
            step(i)
        seconds = time.perf_counter() - t0
        res = _result(steps, job.batch_size, seconds)
        if return_state:
            res["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return res
    finally:
        torch.set_num_threads(prev_threads)


# --------------------------------------------------------------------------------------------
# torch.distributed.rpc
# --------------------------------------------------------------------------------------------


class _Stage(nn.Module):
    """Consecutive segments of a job living on one host (created there via ``rpc.remote``)."""

    def __init__(self, job: BenchJob, indices: list[int]) -> None:
        super().__init__()
        segments = job.build_segments()  # build all, so the seeded init matches run_local
        self.indices = list(indices)
        self.net = nn.Sequential(*(segments[i] for i in self.indices))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def parameter_rrefs(self) -> list:
        from torch.distributed.rpc import RRef

        return [RRef(p) for p in self.parameters()]

    def state(self) -> dict[str, torch.Tensor]:
        """Weights keyed like ``nn.Sequential(*all_segments).state_dict()``."""
        out = {}
        for pos, idx in enumerate(self.indices):
            for k, v in self.net[pos].state_dict().items():
                out[f"{idx}.{k}"] = v.detach().clone()
        return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rpc_process(
    rank: int,
    world_size: int,
    hosts: list[str],
    port: int,
    job: BenchJob,
    steps: int,
    warmup: int,
    threads: int,
    num_worker_threads: int,
    rpc_timeout: float,
    return_state: bool,
    backend_kwargs: dict[str, Any],
    results: Any,
    network: dict[str, Any] | None = None,
) -> None:
    """Entry point of every rpc process; rank 0 (the data owner) drives training.
    `network`: each host's namespace, address and device (bench.tunlink) to run in."""
    master = "127.0.0.1"
    if network is not None:  # first, before torch or anything else opens a socket
        from bench.tunlink import enter_netns

        enter_netns(network["netns"][hosts[rank]])
        master = network["address"][hosts[0]]  # rank 0's rendezvous
        os.environ["TP_SOCKET_IFNAME"] = network["device"][hosts[rank]]
        os.environ["GLOO_SOCKET_IFNAME"] = network["device"][hosts[rank]]  # its rendezvous
    import torch.distributed.rpc as rpc

    # Deprecation chatter from torch.distributed internals (Gloo-as-ProcessGroup, TorchScript
    # functional optimizers) says nothing about the measurement.
    warnings.filterwarnings("ignore", message=".*as a ProcessGroup.*", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*TorchScript.*", category=DeprecationWarning)
    os.environ["MASTER_ADDR"] = master
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(threads)
    try:
        opts = rpc.TensorPipeRpcBackendOptions(
            num_worker_threads=num_worker_threads,
            rpc_timeout=rpc_timeout,
            init_method=f"tcp://{master}:{port}",
            **backend_kwargs,
        )
        rpc.init_rpc(
            hosts[rank],
            rank=rank,
            world_size=world_size,
            backend=rpc.BackendType.TENSORPIPE,
            rpc_backend_options=opts,
        )
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))
        raise
    if rank != 0:
        # A worker serves requests until everyone has called shutdown.
        rpc.shutdown()
        return
    try:
        res = _drive(job, steps, warmup, return_state)
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))
        # Do not wait for a graceful shutdown here; the parent kills what is left.
        rpc.shutdown(graceful=False)
        raise
    rpc.shutdown()
    if "state" in res:  # plain arrays: nothing shared-memory crosses the result queue
        res["state"] = {k: v.numpy() for k, v in res["state"].items()}
    results.put((rank, "ok", res))


def _drive(job: BenchJob, steps: int, warmup: int, return_state: bool) -> dict[str, Any]:
    """Driver (rank 0, the data owner): build the pipeline, train, time, collect weights."""
    import torch.distributed.autograd as dist_autograd
    import torch.distributed.rpc as rpc
    from torch.distributed.optim import DistributedOptimizer
    from torch.distributed.rpc import RRef

    me = job.data_owner
    # Each stage is ("local", _Stage) on the driver or ("remote", RRef[_Stage]) elsewhere.
    pipeline: list[tuple[str, Any]] = []
    param_rrefs: list = []
    for host, indices in job.stages():
        if host == me:
            stage = _Stage(job, indices)
            pipeline.append(("local", stage))
            param_rrefs.extend(RRef(p) for p in stage.parameters())
        else:
            rref = rpc.remote(host, _Stage, args=(job, indices))
            pipeline.append(("remote", rref))
            param_rrefs.extend(rref.rpc_sync().parameter_rrefs())

    opt = DistributedOptimizer(torch.optim.SGD, param_rrefs, **job.optimizer_kwargs())
    batches = job.batches()

    def step(i: int) -> None:
        x, y = batches[i % len(batches)]
        with dist_autograd.context() as ctx:
            h = x
            for kind, stage in pipeline:
                h = stage(h) if kind == "local" else stage.rpc_sync().forward(h)
            loss = job.loss_fn(h, y)
            dist_autograd.backward(ctx, [loss])
            opt.step(ctx)

    for i in range(warmup):
        step(i)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    seconds = time.perf_counter() - t0
    res = _result(steps, job.batch_size, seconds)
    if return_state:
        state: dict[str, torch.Tensor] = {}
        for kind, stage in pipeline:
            state.update(stage.state() if kind == "local" else stage.rpc_sync().state())
        res["state"] = dict(sorted(state.items(), key=lambda kv: _state_key_order(kv[0])))
    return res


def _state_key_order(key: str) -> tuple[int, str]:
    seg, rest = key.split(".", 1)
    return int(seg), rest


def run_rpc(
    job: BenchJob,
    steps: int,
    warmup: int = 10,
    threads: int = 1,
    return_state: bool = False,
    num_worker_threads: int = 4,
    rpc_timeout: float = 60.0,
    timeout: float = 300.0,
    backend_kwargs: dict[str, Any] | None = None,
    tun=None,
) -> dict[str, Any]:
    """Train the job split over one spawned process per host with torch.distributed.rpc.
    With `tun` (a bench.tunlink.TunLink), each process runs in its host's namespace, and
    every connection between them crosses the link.

    The data owner (host of segment 0) is rank 0 and drives; it runs its own segments in
    process. Other hosts are rpc workers holding their segments as ``rpc.remote`` modules.
    Runs of consecutive segments on one host are one call. Timing is taken in the driver.
    ``timeout`` bounds the whole run (process start-up included); on any error or timeout
    every child process is killed by pid. ``backend_kwargs`` go to
    ``TensorPipeRpcBackendOptions`` as they are (e.g. ``_transports=["uv"]``).
    """
    hosts = job.hosts
    world_size = len(hosts)
    port = free_port()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = []
    deadline = time.monotonic() + timeout
    try:
        for rank in range(world_size):
            p = ctx.Process(
                target=_rpc_process,
                args=(
                    rank,
                    world_size,
                    hosts,
                    port,
                    job,
                    steps,
                    warmup,
                    threads,
                    num_worker_threads,
                    rpc_timeout,
                    return_state,
                    dict(backend_kwargs or {}),
                    results,
                    _network(tun, hosts),
                ),
                name=f"rpc-{hosts[rank]}",
                daemon=True,
            )
            p.start()
            procs.append(p)

        res = None
        while res is None:
            try:
                rank, status, payload = results.get(timeout=0.2)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    codes = ", ".join(f"{p.name} exit {p.exitcode}" for p in dead)
                    raise RuntimeError(f"rpc baseline: process died ({codes})") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rpc baseline: no result within {timeout:.0f} s") from None
                continue
            if status != "ok":
                raise RuntimeError(f"rpc baseline: {hosts[rank]} (rank {rank}) failed:\n{payload}")
            res = payload

        for p in procs:
            p.join(timeout=max(1.0, deadline - time.monotonic()))
        if "state" in res:
            res["state"] = {k: torch.from_numpy(v) for k, v in res["state"].items()}
        return res
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()  # SIGKILL to this child's pid
        for p in procs:
            p.join(timeout=5)
        results.close()
        results.join_thread()


def _network(tun, hosts: list[str]) -> dict[str, Any] | None:
    """What an rpc process needs of a TunLink (plain data: it crosses to a spawned child)."""
    if tun is None:
        return None
    return {
        "netns": {h: tun.netns(h) for h in hosts},
        "address": {h: tun.address(h) for h in hosts},
        "device": {h: tun.device(h) for h in hosts},
    }


# --------------------------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="local and torch.distributed.rpc baselines")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument(
        "--repeats", type=int, default=1, help="runs per (job, mode); the median is printed"
    )
    ap.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    args = ap.parse_args(argv)

    def median_sps(fn, job: BenchJob) -> float:
        runs = sorted(
            fn(job, args.steps, args.warmup)["samples_per_s"] for _ in range(args.repeats)
        )
        return statistics.median(runs)

    print(f"{'job':<12} {'mode':<6} {'samples/s':>12} {'vs local':>9}", flush=True)
    for name in args.jobs:
        job = JOBS[name]()
        local = median_sps(run_local, job)
        print(f"{name:<12} {'local':<6} {local:>12,.0f} {1.0:>8.2f}x", flush=True)
        rpc_sps = median_sps(run_rpc, job)
        print(f"{name:<12} {'rpc':<6} {rpc_sps:>12,.0f} {rpc_sps / local:>8.2f}x", flush=True)


if __name__ == "__main__":
    # Run through the importable module so spawned processes and rpc pickles resolve
    # ``bench.baselines`` names rather than ``__main__`` ones.
    from bench.baselines import main as _main

    _main()
