"""Errors a user can act on: each names the problem and the fix, and prints without a traceback."""


class CrowdtuneError(Exception):
    """A problem the user can fix. `problem` says what is wrong, `fix` what to do about it."""

    def __init__(self, problem: str, fix: str):
        super().__init__(problem, fix)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem}\nFix: {self.fix}"


class RedisUnavailable(CrowdtuneError):
    """Redis (the queue) cannot be reached."""


class StoreUnavailable(CrowdtuneError):
    """The DuckDB store cannot be opened (corrupt, newer schema, busy for too long, no access)."""


class SettingsError(CrowdtuneError):
    """A setting has a value Crowdtune cannot work with."""


def failure_message(exc: BaseException) -> str:
    """What a run, post or alert records about a failure: a CrowdtuneError's problem and fix,
    anything else as `TypeName: message` (a bare message often does not say what failed)."""
    if isinstance(exc, CrowdtuneError):
        return f"{exc.problem} Fix: {exc.fix}"
    return f"{type(exc).__name__}: {exc}"


def traceback_message(text: str | None, default: str = "(no error text)") -> str:
    """The exception's own message from a formatted traceback (RQ's `exc_string`): its trailing
    unindented lines, joined with spaces. A CrowdtuneError prints as problem, newline, "Fix: ...", so
    the traceback's last line alone would show the fix without its problem; this keeps both."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    message: list[str] = []
    for line in reversed(lines):
        if line.startswith((" ", "\t")):  # a frame of the traceback: the message is below it
            break
        message.insert(0, line.strip())
    return " ".join(message) if message else default
