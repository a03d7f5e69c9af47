"""Shared test fixtures: paths into ../shared, which tests read in place; and a reaper of the Ray
processes a test leaves running."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures" / "dcsfn-parity"
DATA = SHARED / "data"
# How long a Ray a test stopped may take to exit on its own before it is killed.
RAY_EXIT_GRACE = 15.0


def pytest_configure(config: pytest.Config) -> None:
    """Commands the tests start get Ctrl-C as a terminal gives it: a shell starts a background
    job (``pytest &`` in a script, ``nohup``) with SIGINT ignored, every child inherits that, and
    a Python started so never takes Ctrl-C (the batch driver's stop test then saw it run on)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the tests read ../shared beside the checkout")
    return SHARED


def process_titles() -> Iterator[tuple[int, bytes]]:
    """(pid, command line) of each process on this machine (Ray puts an actor's title there)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / "cmdline").read_bytes()
            except OSError:
                continue


def process_stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command's name: state, parent's pid, ...;
    empty once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def running(pid: int) -> bool:
    """The process exists and is no zombie (one whose parent has not reaped it)."""
    return process_stat(pid)[:1] not in ([], ["Z"])


def ray_processes() -> set[int]:
    """Ray's processes on this machine: its workers and actors (titled ``ray::...``), and the
    raylets, GCS servers and helper scripts it runs from its package folder."""
    return {
        pid
        for pid, title in process_titles()
        if (title.startswith(b"ray::") or b"/site-packages/ray/" in title) and running(pid)
    }


@pytest.fixture(autouse=True)
def no_ray_left_behind() -> Iterator[None]:
    """Kill the Ray processes a test started and left running (a command killed before it
    could stop its Ray, a cluster's orphaned worker), so they cannot starve the tests after it;
    the test still gets a warning, since the command should have stopped them."""
    before = ray_processes()
    yield
    left = ray_processes() - before
    deadline = time.monotonic() + RAY_EXIT_GRACE
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = {pid for pid in left if running(pid)}
    killed = set()
    for _ in range(10):  # a raylet may start workers while it is being killed
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= left
        time.sleep(0.5)
        left = ray_processes() - before
    if killed:
        warnings.warn(
            f"killed {len(killed)} Ray process(es) left running by the test", stacklevel=1
        )


def pytest_unconfigure(config) -> None:
    """A child process a test left behind would hold pytest at its exit, joined by
    multiprocessing forever: the serial pass of 2026-12-07 (Ray 2.60) passed and then hung there
    until killed. Such children are ended here."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
