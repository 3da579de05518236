"""gRPC core settings for the per-message latency of the training path.

gRPC's newer EventEngine endpoints hand every read and write to their own
threads. On the hot path of a split step (one small tensor each way, one hop
after another) those extra thread hops cost about 150-200 us per round trip
here, a fifth of it; the classic endpoints do the I/O on the polling thread.
`python -m bench.run` shows the difference. The settings are gRPC's own
GRPC_EXPERIMENTS switches: a value the user sets wins, and SPLITNN_GRPC_DEFAULTS=0
leaves gRPC as it comes. They must be in the environment before gRPC starts,
which is why every splitnn package applies them on import.

gRPC core also logs its own INFO lines to stderr (`chttp2_transport.cc:1403] ...
Got goaway` each time a peer stops): noise beside splitnn's own logs and in a log
collector. GRPC_VERBOSITY=ERROR keeps its errors and drops the rest, unless the user
set another level.
"""

from __future__ import annotations

import os

VERBOSITY = "ERROR"
EXPERIMENTS = "-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints"


def apply(environ=os.environ) -> None:
    """Put splitnn's gRPC core settings into `environ` unless the user chose their own."""
    if environ.get("SPLITNN_GRPC_DEFAULTS", "1") == "0":
        return
    environ.setdefault("GRPC_EXPERIMENTS", EXPERIMENTS)
    environ.setdefault("GRPC_VERBOSITY", VERBOSITY)
