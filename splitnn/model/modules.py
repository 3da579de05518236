"""Modules a host's operator offers from code installed on that host.

`splitnn-worker --module NAME=package.module:factory` imports `factory` from the
operator's own installed code at start-up, never from the network: a segment's spec
names it, `{ type = "Module", name = "NAME", <typed arguments> }`, and the wire
carries only that name and those arguments (ints, floats, bools, strings, int
lists), checked like any layer's. `factory(**arguments)` must return a torch module.
`splitnn train --module` offers the same to the orchestrator, which then builds the
segment's start weights and checks its shapes; without it, the host initializes the
module itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

from splitnn.errors import InvalidArgument, SplitnnError

_OFFERED: dict[str, Callable[..., nn.Module]] = {}


def offer(text: str) -> str:
    """Register NAME=package.module:factory; returns NAME. SplitnnError if it fails."""
    name, sep, target = text.partition("=")
    module_name, colon, attribute = target.partition(":")
    if not sep or not name.isidentifier() or not colon or not module_name or not attribute:
        raise SplitnnError(f"--module expects NAME=package.module:factory, got {text!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise SplitnnError(f"--module {text}: {type(err).__name__}: {err}") from None
    if not callable(factory):
        raise SplitnnError(f"--module {text}: {attribute} is not callable")
    _OFFERED[name] = factory
    return name


def is_offered(name: str) -> bool:
    return name in _OFFERED


def build(name: str, args: dict, where: str) -> nn.Module:
    """The operator's module NAME built with `args`; InvalidArgument if not offered
    here or if it does not build a torch module."""
    factory = _OFFERED.get(name)
    if factory is None:
        offered = ", ".join(sorted(_OFFERED)) or "none"
        raise InvalidArgument(f"{where}: this host offers no module {name!r} (offered: {offered})")
    try:
        module = factory(**args)
    except (TypeError, ValueError, RuntimeError, AssertionError) as err:
        raise InvalidArgument(f"{where}: module {name!r}: {err}") from None
    if not isinstance(module, nn.Module):
        raise InvalidArgument(f"{where}: module {name!r} built a {type(module).__name__}")
    return module
