"""Pay torch's first-use costs before the first request needs them.

Building the first optimizer imports torch._dynamo (torch.optim wraps its methods
to keep the compiler out), which takes about a second here; the first backward
pass sets up autograd's engine, and the first forward on the meta device (the
activation-size check) imports more of the compiler stack. A worker does all of
it on a background thread as soon as it listens, while its orchestrator is still
starting, instead of inside the first LoadSegment and the first step.
"""

from __future__ import annotations

import gc
import threading

import torch

from splitnn.model.threads import adopt_torch_threads


def warm_up() -> None:
    """One tiny training step with the optimizer machinery splitnn uses; then what it
    imported joins the objects the garbage collector no longer walks (gc.freeze)."""
    adopt_torch_threads()
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)
    layer(torch.zeros(1, 2)).sum().backward()
    optimizer.step()
    with torch.device("meta"):  # the activation-size check's kernels (services.sizes)
        torch.nn.Linear(2, 1)(torch.zeros(1, 2))
    gc.freeze()


def warm_up_in_background() -> threading.Thread:
    """warm_up on a daemon thread; returns it (callers need not wait)."""
    thread = threading.Thread(target=warm_up, name="torch-warm-up", daemon=True)
    thread.start()
    return thread
