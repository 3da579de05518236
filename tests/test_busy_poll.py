"""The driver's event loop polls busily for a moment, then sleeps like any other."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from splitnn.services.driver import Driver
from splitnn.services.segment_host import SegmentHost
from splitnn.services.server import parse_args
from splitnn.transport import busy_poll


def test_spinning_loop_runs_readers_timers_and_threads():
    loop = busy_poll.new_event_loop(0.002)
    reader, writer = socket.socketpair()
    try:
        received = loop.create_future()
        loop.add_reader(reader, lambda: received.set_result(reader.recv(16)))

        async def scenario():
            started = time.monotonic()
            await asyncio.sleep(0.05)
            slept = time.monotonic() - started
            threading.Timer(0.02, writer.send, (b"ping",)).start()
            data = await received
            in_thread = await loop.run_in_executor(None, lambda: threading.current_thread().name)
            return slept, data, in_thread

        slept, data, in_thread = loop.run_until_complete(scenario())
        assert slept >= 0.05
        assert data == b"ping"
        assert in_thread != threading.current_thread().name
    finally:
        loop.remove_reader(reader)
        loop.close()
        reader.close()
        writer.close()


def test_an_idle_selector_sleeps_after_its_spin():
    # Thread CPU time, not wall time: a selector that kept polling would use nearly all
    # of the 0.3 s; one that sleeps after its 2 ms spin uses next to nothing.
    selector = busy_poll.SpinningSelector(0.002)
    reader, writer = socket.socketpair()
    try:
        selector.register(reader, busy_poll.selectors.EVENT_READ)
        cpu = time.thread_time()
        assert selector.select(0.3) == []
        assert time.thread_time() - cpu < 0.1

        threading.Timer(0.2, writer.send, (b"x",)).start()
        cpu = time.thread_time()
        ready = selector.select(None)  # blocks until the write, however long
        assert [key.fileobj for key, _ in ready] == [reader]
        assert time.thread_time() - cpu < 0.1
    finally:
        selector.close()
        reader.close()
        writer.close()


def test_ready_events_come_back_at_once_and_zero_timeout_never_waits():
    selector = busy_poll.SpinningSelector(10.0)  # a spin that would show if it ran
    reader, writer = socket.socketpair()
    try:
        selector.register(reader, busy_poll.selectors.EVENT_READ)
        assert selector.select(0) == []
        writer.send(b"x")
        assert [key.fileobj for key, _ in selector.select(None)] == [reader]
    finally:
        selector.close()
        reader.close()
        writer.close()


def test_zero_spin_gives_a_plain_loop_and_negative_is_refused():
    loop = busy_poll.new_event_loop(0)
    try:
        assert not isinstance(getattr(loop, "_selector", None), busy_poll.SpinningSelector)
    finally:
        loop.close()
    with pytest.raises(ValueError, match="at least 0"):
        busy_poll.new_event_loop(-0.001)


def test_driver_loop_spins_by_default_and_not_when_told():
    spinning = Driver(SegmentHost("alice", {}))
    plain = Driver(SegmentHost("bob", {}), spin_seconds=0)
    for driver, wanted in ((spinning, True), (plain, False)):
        loop = driver._event_loop()
        is_spinning = isinstance(getattr(loop, "_selector", None), busy_poll.SpinningSelector)
        assert is_spinning is wanted
        loop.call_soon_threadsafe(loop.stop)


def test_worker_flag_sets_the_spin_and_refuses_a_negative_one(capsys):
    base = ["--name", "alice", "--listen", "127.0.0.1:0"]
    assert parse_args(base).busy_poll_us == int(busy_poll.DEFAULT_SPIN_SECONDS * 1e6)
    assert parse_args([*base, "--busy-poll-us", "0"]).busy_poll_us == 0
    with pytest.raises(SystemExit):
        parse_args([*base, "--busy-poll-us", "-5"])
    assert "--busy-poll-us must be at least 0" in capsys.readouterr().err


def test_the_spin_sheds_after_long_waits_and_comes_back_after_short_ones():
    selector = busy_poll.SpinningSelector(0.002)
    reader, writer = socket.socketpair()
    try:
        selector.register(reader, busy_poll.selectors.EVENT_READ)
        budgets = []
        for _ in range(6):  # answers 20 ms away: each outlasts the spin
            threading.Timer(0.02, writer.send, (b"x",)).start()
            selector.select(None)
            reader.recv(1)
            budgets.append(selector.budget)
        assert budgets == [0.001, 0.0005, 0.00025, 0.000125, 0.0, 0.0]
        cpu = time.thread_time()  # no spin left: a long wait costs no CPU
        threading.Timer(0.2, writer.send, (b"x",)).start()
        selector.select(None)
        reader.recv(1)
        assert time.thread_time() - cpu < 0.05
        writer.send(b"x")  # an answer already there: a short wait gives the spin back
        selector.select(None)
        assert selector.budget == 0.002
    finally:
        selector.close()
        reader.close()
        writer.close()
