"""Local child processes that never outlive the process that started them."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def exit_with_parent() -> None:
    """Ask Linux to send SIGTERM when our parent dies (even by SIGKILL), so local
    workers never outlive the orchestrator that started them."""
    parent = os.getppid()
    try:
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the orchestrator stops us itself
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(0)


def name_process(name: str) -> None:
    """Set the name `ps -o comm` and `top` show (Linux, 15 bytes at most): a forked
    worker would otherwise show its fork server's."""
    try:
        _libc().prctl(PR_SET_NAME, name.encode()[:15])
    except (OSError, AttributeError):
        pass
