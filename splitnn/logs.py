"""How both commands log: lines for people (text), or one JSON object a line for a
log collector (json), with the fields a collector indexes on.

A JSON line holds time (UTC, ISO 8601), level, worker, run, step and message, and
the logger's name. `run` and `step` come from `extra={"run": ..., "step": ...}`
where a line is about one run (null otherwise); `extra={"fields": {...}}` adds a
line's structured values.
gRPC core's own chatter (`chttp2_transport.cc ... Got goaway` when a peer stops)
is kept out by splitnn.transport.grpc_env, which sets GRPC_VERBOSITY.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(name)s %(message)s"


class JsonLines(logging.Formatter):
    """One JSON object per record; `worker` names the process's host (None: the orchestrator)."""

    def __init__(self, worker: str | None = None):
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "worker": getattr(record, "worker", self.worker),
            "run": getattr(record, "run", None),
            "step": getattr(record, "step", None),
            "message": record.getMessage(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)  # structured values of the line, if any
        if fields:
            line["fields"] = fields
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(log_format: str = "text", level: str = "INFO", worker: str | None = None) -> None:
    """Set up the root logger for a command: `log_format` text or json, on stderr."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLines(worker))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def announce(text: str, log_format: str = "text", worker: str | None = None, **fields) -> None:
    """A line a command prints on stdout for people or the process that started it
    ("... listening on HOST:PORT"); as a JSON object of the same fields under json."""
    if log_format == "json":
        record = logging.LogRecord("splitnn", logging.INFO, "", 0, text, None, None)
        for key, value in fields.items():
            setattr(record, key, value)
        text = JsonLines(worker).format(record)
    print(text, flush=True)
