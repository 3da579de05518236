"""Make a thread's tensor arithmetic use the process's torch thread count.

torch.set_num_threads reaches OpenMP and MKL only in the thread that calls it.
A thread started later (gRPC's handler pool, the driver's event loop) gets
OpenMP's default of one thread per core: its small matrix products then start
a team whose idle members spin, taking a whole core from the other processes.
That cost a worker on 2 shared cores most of a core (measured on the MLP
benchmark's 5-way layout, with `--threads 1`).
"""

from __future__ import annotations


def adopt_torch_threads() -> None:
    """Apply the process's torch thread count (torch.set_num_threads) to this thread.
    torch is imported here, not above: the channels module needs this function, and
    the CLI should not import torch before it starts local workers."""
    import torch

    torch.set_num_threads(torch.get_num_threads())
