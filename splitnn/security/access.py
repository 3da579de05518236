"""Who may call what on a worker: roles, the policy table, and the checks, in one place.

A caller's identity comes from its certificate (mutual TLS) or its token (see
splitnn.security.identity). Its role on this worker:

- ORCHESTRATOR: an identity named by `splitnn-worker --orchestrator`. It creates
  runs, and a run belongs to the identity that created it: only that one may
  load, export, drop, drive, or send ops (relay mode) for it, or see it.
- PEER: any other identity the worker accepts (another worker of the cluster).
  It may only send the forward / backward / step ops of a run that names it
  among its callers, and never an op that reads this worker's own rows or labels
  (those run only for the worker's own driver, in process, or for the run's
  orchestrator in relay mode).

A worker with neither TLS nor tokens (plaintext on loopback, or --insecure) cannot
tell callers apart: every caller is the anonymous orchestrator. Health checks are
another service and stay open.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from splitnn.errors import PermissionDenied, Unauthenticated
from splitnn.security.identity import TokenTable, certificate_identity
from splitnn.security.policy import token_identity
from splitnn.v1 import worker_pb2
from splitnn.wire.ops import Op

DEFAULT_ORCHESTRATORS = ("orchestrator",)


class RunView(Protocol):
    """What the policy reads of a run a worker serves (services.runs.Run)."""

    owner: str | None
    callers: frozenset[str]


class Role(enum.Enum):
    """What a caller is to this worker."""

    ORCHESTRATOR = "orchestrator"
    PEER = "peer"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: its identity (None when the worker has no way to tell
    callers apart) and its role here."""

    name: str | None
    role: Role

    def __str__(self) -> str:
        return f"{self.role.value} {self.name}" if self.name else "anonymous caller"


ANONYMOUS = Caller(None, Role.ORCHESTRATOR)

# The policy table: which roles may call each RPC of WorkerService at all. What a
# caller may do within one (whose runs, which ops) is checked by AccessPolicy below.
RPC_ROLES: dict[str, frozenset[Role]] = {
    "LoadSegment": frozenset({Role.ORCHESTRATOR}),
    "ExportSegment": frozenset({Role.ORCHESTRATOR}),
    "DropSegment": frozenset({Role.ORCHESTRATOR}),
    "Drive": frozenset({Role.ORCHESTRATOR}),
    "GetStatus": frozenset({Role.ORCHESTRATOR}),
    "Forward": frozenset({Role.ORCHESTRATOR, Role.PEER}),
    "Backward": frozenset({Role.ORCHESTRATOR, Role.PEER}),
    "Step": frozenset({Role.ORCHESTRATOR, Role.PEER}),
    "Exchange": frozenset({Role.ORCHESTRATOR, Role.PEER}),
}


def reads_own_data(op: Op) -> bool:
    """Whether an op reads the worker's own rows or labels."""
    head = op.head
    return isinstance(head, worker_pb2.ForwardRequest) and (
        head.HasField("data") or head.HasField("loss")
    )


class AccessPolicy:
    """Identifies callers and applies the policy. `orchestrators` are the identities
    that may run training here; `tls` and `tokens` say how callers prove who they are
    (neither: no identities, every caller is ANONYMOUS)."""

    def __init__(
        self,
        orchestrators=DEFAULT_ORCHESTRATORS,
        tls: bool = False,
        tokens: TokenTable | None = None,
    ):
        self.orchestrators = frozenset(orchestrators)
        self.tls = tls
        self.tokens = tokens

    @property
    def identifies(self) -> bool:
        """Whether callers are told apart at all."""
        return self.tls or self.tokens is not None

    def identify(self, context) -> Caller:
        """The caller of an RPC, from its certificate and/or its token. With both, the
        two must name the same identity. A shared token names no one: beside TLS it only
        adds a secret, alone it makes every holder the orchestrator."""
        if not self.identifies:
            return ANONYMOUS
        names = set()
        if self.tls:
            names.add(certificate_identity(context.auth_context()))
        if self.tokens is not None and not (self.tls and self.tokens.shared):
            names.add(token_identity(self.tokens, context.invocation_metadata()))
        if len(names) != 1 or None in names:
            raise Unauthenticated("the caller's certificate and token name no one identity")
        (name,) = names
        return self.caller(name)

    def caller(self, name: str) -> Caller:
        """The Caller an identity is here."""
        role = Role.ORCHESTRATOR if name in self.orchestrators else Role.PEER
        return Caller(name, role)

    def check_rpc(self, caller: Caller, rpc: str) -> None:
        """May this caller use this RPC at all (the policy table)?"""
        if caller.role not in RPC_ROLES.get(rpc, frozenset()):
            raise PermissionDenied(f"{caller} may not call {rpc}")

    def check_run(self, caller: Caller, run_id: str, run: RunView | None) -> None:
        """May this orchestrator act on this run (load into it, export, drop, drive)?
        A run belongs to the identity that created it; `run` None: no such run yet."""
        if caller.role is not Role.ORCHESTRATOR:
            raise PermissionDenied(f"{caller} may not manage runs")
        if run is not None and run.owner != caller.name:
            raise PermissionDenied(f"run {run_id[:64]!r} belongs to another orchestrator")

    def check_op(self, caller: Caller, op: Op, run: RunView | None) -> None:
        """May this caller send this op? The run's orchestrator may send any op of it;
        a peer named among the run's callers may send ops that read no data here."""
        run_id = op.head.run_id
        if caller.role is Role.ORCHESTRATOR:
            self.check_run(caller, run_id, run)
            return
        if run is None or caller.name not in run.callers:
            raise PermissionDenied(f"{caller} is not a host of run {run_id[:64]!r}")
        if reads_own_data(op):
            raise PermissionDenied(
                f"{caller} may not run an op that reads this worker's own rows or labels"
            )
