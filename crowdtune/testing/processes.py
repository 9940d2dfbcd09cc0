"""Waiting for a condition, free ports and killing process trees, as tests and benchmarks do with real
workers and servers."""

from __future__ import annotations

import os
import signal
import socket
import time

import psutil


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):
    """Poll `condition` until it returns a truthy value and return that; AssertionError after `timeout` s.
    A poll that finds the store busy (a writer's long batch on a loaded machine) counts as "not yet"."""
    from crowdtune.store.connection import StoreBusy

    deadline = time.monotonic() + timeout
    busy = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except StoreBusy as exc:
            busy, value = exc, None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}"
                         + (f" (last poll: {busy})" if busy else ""))


def kill_tree(pid: int, sig=signal.SIGKILL) -> None:
    """Send `sig` to process `pid` and all its children (a worker with its job), then wait for them."""
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [parent, *parent.children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    # Poll for the end ourselves: psutil.wait_procs sleeps in steps of up to a second or two per
    # process, which made every test's teardown ~3 s. A zombie has ended (its parent reaps it later).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in procs):
        time.sleep(0.01)


def _alive(proc: psutil.Process) -> bool:
    try:
        if proc.status() != psutil.STATUS_ZOMBIE:
            return True
    except psutil.NoSuchProcess:
        return False
    # Reap our own child, as psutil.wait_procs did: a zombie's pid still "exists", and whoever checks
    # whether a killed worker is alive (recovery, RQ) must see it gone.
    try:
        os.waitpid(proc.pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: its parent (or init) reaps it
    return False
