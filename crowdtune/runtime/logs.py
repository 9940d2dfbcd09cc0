"""Logs people can search: one JSON line per event, in rotated files under <data_dir>/logs.

Each process writes its events to <data_dir>/logs/<name>.jsonl (the supervisor `supervisor`, the
workers `crowdtune up` starts `store-worker`, `worker-1` ...; a worker started by hand names its file
after its queues), rotated at `log_file_mb` with `log_files_kept` older files beside it
(<name>.jsonl.1 is the newest of those). A worker's forked jobs write to their worker's file. A line:

    {"at": "2026-12-01T15:02:03.123456Z", "level": "INFO", "process": "worker-1", "pid": 4242,
     "logger": "crowdtune.runtime.workers", "event": "job finished: jobs.online.publish_post",
     "job_id": "publish-r1-3", "run_id": "r1", "face_id": "sandbox", "seconds": 2.1}

The ids are those of the job being run (ids_of_job: its arguments and meta, by name) and any a step
adds with `bound_ids(...)`. `crowdtune logs [--follow] [--run ID] [--face ID] [--job ID]` reads every
file, merged by time (read_events, follow_events).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import inspect
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from logging.handlers import RotatingFileHandler
from pathlib import Path

# The ids a line may carry, in the order they are shown.
IDS = ("run_id", "face_id", "job_id", "update_id", "post_id", "version_id", "write_id")
SUFFIX = ".jsonl"
CONSOLE_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"  # what a worker prints on its terminal

_bound: ContextVar[dict[str, str]] = ContextVar("crowdtune_log_ids", default={})  # noqa: B039 - never mutated


@contextlib.contextmanager
def bound_ids(**ids: object) -> Iterator[None]:
    """Every line logged in this block (in this process and in processes it forks) carries these ids."""
    token = _bound.set({**_bound.get(), **{k: str(v) for k, v in ids.items() if v is not None and v != ""}})
    try:
        yield
    finally:
        _bound.reset(token)


def ids_of_job(job) -> dict[str, str]:
    """The ids of an RQ job: its own, and those of IDS among its arguments (by parameter name) and meta."""
    ids = {"job_id": job.id}
    ids.update({k: str(v) for k, v in (job.meta or {}).items() if k in IDS and v is not None})
    try:
        arguments = inspect.signature(job.func).bind_partial(*job.args, **job.kwargs).arguments
    except Exception:  # noqa: BLE001 - a job that cannot be imported or bound is logged with its job id only
        arguments = {}
    ids.update({k: str(v) for k, v in arguments.items() if k in IDS and isinstance(v, (str, int))})
    return ids


class JsonLineFormatter(logging.Formatter):
    """A record as one JSON line: time, level, process, logger, event, the bound ids, `extra` fields."""

    _PLAIN = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}

    def __init__(self, process_name: str):
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        at = dt.datetime.fromtimestamp(record.created, dt.UTC)
        # Microseconds: lines of two processes rarely tie, and the merge orders them by this text.
        line: dict[str, object] = {"at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                                   "level": record.levelname, "process": self.process_name, "pid": record.process,
                                   "logger": record.name, "event": record.getMessage()}
        line.update(_bound.get())
        for key, value in vars(record).items():  # logger.info(..., extra={"run_id": ..., "seconds": ...})
            if key not in self._PLAIN and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)  # a traceback stays on its one line
        return json.dumps(line, default=str, ensure_ascii=False)


class SharedRotatingFileHandler(RotatingFileHandler):
    """A RotatingFileHandler that several processes may share (a worker and the jobs it forks, two
    workers given one name): whoever finds the file full rotates it, holding a lock, and the others
    follow to the new file at their next line instead of writing on into the renamed one."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.stream is not None and _inode(self.baseFilename) != os.fstat(self.stream.fileno()).st_ino:
                self.stream.close()
                self.stream = self._open()
        except OSError:
            pass  # the next emit tries again; logging never takes a process down
        super().emit(record)

    def shouldRollover(self, record: logging.LogRecord) -> bool:  # noqa: N802 - the stdlib's name
        if self.maxBytes <= 0:
            return False
        try:
            size = os.stat(self.baseFilename).st_size  # the file's size, not this process's place in it
        except OSError:
            return False
        return size + len(self.format(record)) + 1 > self.maxBytes

    def doRollover(self) -> None:  # noqa: N802
        folder, name = os.path.split(self.baseFilename)
        with open(os.path.join(folder, f".{name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if os.stat(self.baseFilename).st_size > self.maxBytes / 2:  # nobody rotated it while we waited
                    super().doRollover()
                else:
                    if self.stream is not None:
                        self.stream.close()
                    self.stream = self._open()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


class _QuietRq(logging.Filter):
    """RQ announces every job at INFO; the job events say more. Its warnings and errors stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith("rq.")


def log_path(log_dir: Path, name: str) -> Path:
    return Path(log_dir) / f"{name}{SUFFIX}"


def configure_logging(log_dir: Path, name: str, max_bytes: int, backups: int,
                      console_level: str | None = "INFO") -> Path:
    """Send this process's log records at INFO and above to <log_dir>/<name>.jsonl (rotated), and at
    `console_level` and above to stderr as plain text (None = not at all). Returns the file's path.
    Calling it again replaces what an earlier call set up."""
    path = log_path(log_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_crowdtune", False)]:
        root.removeHandler(handler)
        handler.close()
    file_handler = SharedRotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    file_handler.setFormatter(JsonLineFormatter(name))
    file_handler.addFilter(_QuietRq())
    handlers: list[logging.Handler] = [file_handler]
    if console_level is not None:
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(console_level.upper())
        console.setFormatter(logging.Formatter(CONSOLE_FORMAT))
        handlers.append(console)
    for handler in handlers:
        handler._crowdtune = True
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path


def start_logging(settings, name: str, console_level: str | None = "INFO") -> Path:
    """configure_logging with the settings' folder and rotation (log_file_mb, log_files_kept)."""
    return configure_logging(settings.log_dir, name, int(settings.log_file_mb * 1024 * 1024),
                             settings.log_files_kept, console_level)


# --------------------------------------------------------------------------------------------
# Reading: `crowdtune logs`


@dataclass(frozen=True)
class EventFilter:
    """Which events to show: those whose ids equal every id given (None = any)."""

    run_id: str | None = None
    face_id: str | None = None
    job_id: str | None = None

    def __call__(self, event: dict) -> bool:
        return all(want is None or event.get(key) == want
                   for key, want in (("run_id", self.run_id), ("face_id", self.face_id), ("job_id", self.job_id)))


def _parse(line: str) -> dict | None:
    try:
        event = json.loads(line)
    except ValueError:  # a line cut short by a killed process
        return None
    return event if isinstance(event, dict) else None


def log_files(log_dir: Path) -> list[Path]:
    """Every event file under `log_dir`, rotated ones included, oldest generation first."""
    def generation(path: Path) -> int:
        tail = path.name.rsplit(".", 1)[-1]
        return -int(tail) if tail.isdigit() else 0

    files = [p for p in Path(log_dir).glob(f"*{SUFFIX}*") if p.name.endswith(SUFFIX) or p.suffix[1:].isdigit()]
    return sorted(files, key=lambda p: (generation(p), p.name))


def read_events(log_dir: Path, keep: Callable[[dict], bool] = EventFilter(), last: int | None = None) -> list[dict]:
    """The events of every file under `log_dir` that `keep` accepts, oldest first (the `last` newest of them)."""
    events = []
    for path in log_files(log_dir):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                events += [e for e in map(_parse, f) if e is not None and keep(e)]
        except FileNotFoundError:  # rotated away while we read
            continue
    events.sort(key=lambda e: str(e.get("at", "")))  # stable: one process's lines keep their order
    return events[-last:] if last else events


def follow_events(log_dir: Path, keep: Callable[[dict], bool] = EventFilter(), poll: float = 0.5,
                  stop: Callable[[], bool] = lambda: False) -> Iterator[dict]:
    """Events appended to the files under `log_dir` from now on, as they come (new files and rotations
    included), until `stop()` is true."""
    log_dir = Path(log_dir)
    open_files: dict[Path, tuple] = {}  # path -> (file, inode, unfinished line)

    def kept(lines: list[str]) -> Iterator[dict]:
        for line in lines:
            event = _parse(line)
            if event is not None and keep(event):
                yield event

    def drain(path: Path) -> Iterator[dict]:
        f, inode, partial = open_files[path]
        *lines, partial = (partial + f.read()).split("\n")
        open_files[path] = (f, inode, partial)
        yield from kept(lines)

    def rotated_since(path: Path, inode: int) -> list[Path]:
        """The rotations of `path` made after the file `inode` was rotated away, oldest first (several
        rotations may happen between two polls)."""
        newer = []
        for n in itertools.count(1):
            older = path.with_name(f"{path.name}.{n}")
            if _inode(str(older)) in (None, inode):
                return newer[::-1]
            newer.append(older)

    def poll_once() -> list[dict]:
        events = []
        for path in sorted(log_dir.glob(f"*{SUFFIX}")):
            inode = _inode(str(path))
            if path in open_files and open_files[path][1] != inode:  # rotated: finish the old file first
                events += drain(path)
                f, old_inode, _ = open_files.pop(path)
                f.close()
                for rotated in rotated_since(path, old_inode):
                    with contextlib.suppress(FileNotFoundError), open(rotated, encoding="utf-8",
                                                                      errors="replace") as whole:
                        events += kept(whole.read().split("\n"))
            if path not in open_files and inode is not None:
                f = open(path, encoding="utf-8", errors="replace")
                open_files[path] = (f, os.fstat(f.fileno()).st_ino, "")
            if path in open_files:
                events += drain(path)
        return sorted(events, key=lambda e: str(e.get("at", "")))  # the processes' lines merged by time

    for path in log_dir.glob(f"*{SUFFIX}"):  # what is there now was read already: only what comes next
        f = open(path, encoding="utf-8", errors="replace")
        f.seek(0, os.SEEK_END)
        open_files[path] = (f, os.fstat(f.fileno()).st_ino, "")
    try:
        while not stop():
            yield from poll_once()
            time.sleep(poll)
    finally:
        for f, _, _ in open_files.values():
            f.close()


def format_event(event: dict) -> str:
    """One event as a line for people: time, level, process, its ids, the event, any other fields."""
    at = str(event.get("at", "")).replace("T", " ").rstrip("Z")[:23]  # to the millisecond
    ids = " ".join(f"{key.removesuffix('_id')}={event[key]}" for key in IDS if event.get(key))
    shown = {"at", "level", "process", "pid", "logger", "event", "error", *IDS}
    extra = " ".join(f"{k}={v}" for k, v in event.items() if k not in shown)
    line = f"{at} {event.get('level', '')} {event.get('process', '')}" + (f" [{ids}]" if ids else "")
    line += f" {event.get('event', '')}" + (f" ({extra})" if extra else "")
    if event.get("error"):
        line += "\n    " + str(event["error"]).replace("\n", "\n    ")
    return line
