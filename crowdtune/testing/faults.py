"""A read-only disk, as a worker sees it: folders made read-only, and processes that respect that even as root.

As root, permission bits do not stop writes (CAP_DAC_OVERRIDE); a process started with
`preexec_fn=drop_dac_override` runs without that capability, so a read-only folder is read-only for
it as on a real disk.
"""

from __future__ import annotations

import ctypes
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CAP_DAC_OVERRIDE = 1
PR_CAPBSET_DROP = 24


def drop_dac_override() -> None:
    """In a child about to start (preexec_fn): give up CAP_DAC_OVERRIDE when running as root."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "cannot drop CAP_DAC_OVERRIDE")


def permissions_bind(tmp_path: Path) -> bool:
    """Whether a process started without CAP_DAC_OVERRIDE is refused writing to a read-only folder."""
    probe = tmp_path / "read-only-probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        done = subprocess.run(["sh", "-c", f"touch {probe}/x"], preexec_fn=drop_dac_override, capture_output=True)
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        probe.chmod(0o755)
    return done.returncode != 0


def set_read_only(folder: Path, read_only: bool) -> None:
    """chmod the folder tree a-w (as a read-only disk looks to a process), or back to u+w."""
    paths = [folder, *folder.rglob("*")]
    for path in (reversed(paths) if read_only else paths):
        try:
            mode = path.stat().st_mode
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) if read_only else mode | stat.S_IWUSR)
        except FileNotFoundError:  # renamed or removed by a writer meanwhile
            continue


_HOLDER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)   # like a user's `duckdb -readonly` session
print("holding", flush=True)
sys.stdin.readline()                                 # until the caller lets go
con.close()
"""


@contextmanager
def store_held_by_another_program(path) -> Iterator[None]:
    """Hold the store file read-only from another process for the block (writers then wait), as a
    user's `duckdb -readonly` shell does. Another process, because DuckDB's file locks belong to the
    process: a handle in the caller's would lose its lock when one of its own reads detaches the file."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    try:
        if holder.stdout.readline().strip() != b"holding":
            raise RuntimeError(f"could not hold {path}")
        yield
    finally:
        holder.communicate(b"go\n", timeout=30)
