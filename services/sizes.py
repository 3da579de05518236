"""Sizes checked before the work: what a forward through a chain would allocate for an
input shape, computed on the meta device (shapes, no storage), and the rows an op may
name. A 16-byte input must not make a worker build a 256 MiB activation."""

from __future__ import annotations

import torch

from splitnn.errors import InvalidArgument, ResourceExhausted
from splitnn.model import layers as layer_specs
from splitnn.services.segment import Segment

_CACHE_LIMIT = 4096


class ActivationSizes:
    """Checks each layer's output size for a chain and an input shape against a cap,
    once per (chain, shape, dtype, mode): later forwards of the same shape pay one
    dictionary lookup."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._checked: set[tuple] = set()
        self._meta: dict[int, torch.nn.Module] = {}

    def forget(self) -> None:
        """Segments changed (loaded, replaced, dropped): check shapes again."""
        self._checked.clear()
        self._meta.clear()

    def check(self, chain: list[Segment], x: torch.Tensor, train: bool) -> None:
        """Refuse (ResourceExhausted) an input whose activations through `chain` would
        exceed the cap at any layer."""
        key = (tuple(id(s) for s in chain), tuple(x.shape), x.dtype, train)
        if key in self._checked:
            return
        out = torch.empty(x.shape, dtype=x.dtype, device="meta")
        try:
            with torch.no_grad():
                for segment in chain:
                    for position, layer in enumerate(self._meta_of(segment)):
                        layer.train(train)
                        out = layer(out)
                        self._check_size(segment, position, out)
        except ResourceExhausted:
            raise
        except NotImplementedError:
            pass  # a layer without a meta kernel: the real forward will say
        except (RuntimeError, ValueError, IndexError) as err:
            raise InvalidArgument(
                f"segment {segment.index} cannot take this input: {err}"
            ) from None
        if len(self._checked) >= _CACHE_LIMIT:
            self._checked.clear()
        self._checked.add(key)

    def _meta_of(self, segment: Segment) -> torch.nn.Module:
        meta = self._meta.get(id(segment))
        if meta is None:
            meta = layer_specs.build_meta(segment.layers, f"segment {segment.index}")
            meta = meta.to(segment.dtype)
            self._meta[id(segment)] = meta
        return meta

    def _check_size(self, segment: Segment, position: int, out) -> None:
        tensors = out if isinstance(out, tuple | list) else (out,)
        size = sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
        if size > self.max_bytes:
            shape = list(tensors[0].shape)
            raise ResourceExhausted(
                f"segment {segment.index} layer {position} would output {shape} "
                f"({size} bytes) for this input, over the worker's cap of {self.max_bytes}"
            )


def check_rows(rows: list[int], row_bytes: int, max_rows: int, max_bytes: int, what: str):
    """Refuse an op naming more rows than the cap, or rows whose features would exceed
    the tensor cap, before a row is read."""
    if len(rows) > max_rows:
        raise ResourceExhausted(f"{what} names {len(rows)} rows; the cap is {max_rows}")
    if len(rows) * row_bytes > max_bytes:
        raise ResourceExhausted(
            f"{what}: {len(rows)} rows of {row_bytes} bytes exceed the cap of {max_bytes} bytes"
        )
