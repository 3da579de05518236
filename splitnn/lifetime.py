"""Local child processes that never outlive the process that started them."""

from __future__ import annotations

import os
import signal
import sys

from splitnn.libc import libc

PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1


def exit_with_parent() -> None:
    """Ask Linux to send SIGTERM when our parent dies (even by SIGKILL), so local
    workers never outlive the orchestrator that started them."""
    parent = os.getppid()
    try:
        libc().prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the orchestrator stops us itself
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(0)


def name_process(name: str) -> None:
    """Set the name `ps -o comm` and `top` show (Linux, 15 bytes at most): a forked
    worker would otherwise show its fork server's."""
    try:
        libc().prctl(PR_SET_NAME, name.encode()[:15])
    except (OSError, AttributeError):
        pass
