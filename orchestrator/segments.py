"""Where a run's segments live, and moving them: the initial weights as plain PyTorch
builds them, a checkpoint's states, the perimeter handed from one owner to the next,
export at the end, and dropping them from every worker when the run is done."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from splitnn.errors import SplitnnError
from splitnn.model import layers as layer_specs
from splitnn.orchestrator.config import Config
from splitnn.v1 import worker_pb2

# The global RNG is what plain PyTorch code uses to build a model; runs started
# from several threads of one process must not interleave their draws.
_GLOBAL_RNG = threading.Lock()


def initial_states(config: Config) -> list[dict[str, torch.Tensor]]:
    """Segment weights as plain PyTorch builds them: manual_seed, then segments in order
    (or the config's own start weights, those of the Python API's segments)."""
    if config.initial is not None:
        return [dict(state) for state in config.initial]
    with _GLOBAL_RNG, torch.random.fork_rng():
        torch.manual_seed(config.seed)
        states = []
        for seg in config.segments:
            if layer_specs.needs_unoffered_module(seg.layers):
                states.append({})  # its host initializes the operator's module itself
                continue
            module = layer_specs.build_segment(seg.layers, f"segments[{seg.index}]")
            states.append(
                {f"model.{k}": v.detach().clone() for k, v in module.state_dict().items()}
            )
    return states


@dataclass
class SegmentPlacement:
    """The host of every segment of one run, and the calls that load and move them."""

    config: Config
    clients: dict
    run_id: str
    location: dict[int, str] = field(default_factory=dict)

    def load_initial(self) -> None:
        """Load every segment with its initial weights where the first owner needs it."""
        placement = self.config.placement(self.config.owners[0])
        self.load(
            [placement[seg.index] for seg in self.config.segments], initial_states(self.config)
        )

    @property
    def callers(self) -> list[str]:
        """The workers that may send this run's ops to one another: all its hosts, by
        the identities they prove (the host name, which a token names, and the
        certificate's name where the config gives one as server_name)."""
        names = set(self.config.workers)
        names.update(w.server_name for w in self.config.workers.values() if w.server_name)
        return sorted(names)

    @property
    def peers(self) -> list[worker_pb2.Peer]:
        """Where the run's hosts listen, as this orchestrator reaches them: chain
        forwarding dials only these."""
        return [
            worker_pb2.Peer(
                host=h,
                address=c.address,
                server_name=c.server_name or "",
                data_address=c.data_address or "",
            )
            for h, c in sorted(self.clients.items())
        ]

    def _load(self, host: str, seg, state: dict[str, torch.Tensor], replace=False) -> None:
        self.clients[host].load_segment(
            self.run_id,
            seg.index,
            seg.layers,
            self.config.optimizer,
            state,
            callers=self.callers,
            peers=self.peers,
            replace=replace,
        )
        self.location[seg.index] = host

    def load(self, hosts: list[str], states: list[dict[str, torch.Tensor]], replace=False) -> None:
        """Load segment i on hosts[i] with states[i] (weights, optimizer state); with
        `replace`, over the segment already there."""
        for seg, host, state in zip(self.config.segments, hosts, states, strict=True):
            self._load(host, seg, state, replace)

    def export(self, index: int) -> dict[str, torch.Tensor]:
        """A segment's weights and optimizer state, from the host that holds it."""
        return self.clients[self.location[index]].export_segment(self.run_id, index)

    def export_all(self) -> list[dict[str, torch.Tensor]]:
        """Every segment's state, in chain order."""
        return [self.export(seg.index) for seg in self.config.segments]

    def hand_over(self, placement: list[str]) -> bool:
        """Move perimeter segments, weights and optimizer state both, to the new owner;
        True if anything moved."""
        moved = False
        for seg in self.config.segments:
            old, new = self.location[seg.index], placement[seg.index]
            if old == new:
                continue
            moved = True
            self.clients[old].drain()
            state = self.export(seg.index)
            self._load(new, seg, state)
            self.clients[old].drop_segment(self.run_id, seg.index)
        return moved

    def cleanup(self) -> None:
        """Drop the run's segments from every worker (best effort)."""
        for index, host in self.location.items():
            try:
                self.clients[host].drop_segment(self.run_id, index)
            except SplitnnError:
                pass
