"""Logging set-up shared by the CLI and the Snakemake scripts.

Every line says what it belongs to: :func:`log_context` names the current unit of work (``fold 2
epoch 3/20``, ``fold 2 predict ext``) and the handlers set up here print it in brackets after the
level, so the interleaved output of folds trained in parallel stays readable.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(context)s%(name)s: %(message)s"

_CONTEXT: ContextVar[str] = ContextVar("gigamil_log_context", default="")


class ContextFilter(logging.Filter):
    """Sets ``record.context`` to ``"[<current log_context>] "`` (empty outside any)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _CONTEXT.get()
        record.context = f"[{ctx}] " if ctx else ""
        return True


def format_handler(handler: logging.Handler) -> logging.Handler:
    """Give ``handler`` gigamil's line format (time, level, [context], logger: message)."""
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(ContextFilter())
    return handler


@contextmanager
def log_context(text: str) -> Iterator[None]:
    """Within the block, every log line names ``text`` (e.g. ``fold 2 epoch 3/20``); it replaces
    the enclosing context, so give the whole name."""
    token = _CONTEXT.set(text)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_context() -> str:
    """The innermost :func:`log_context` text ('' outside any)."""
    return _CONTEXT.get()


def setup_logging(
    log_file: str | Path | None = None, level: int = logging.INFO, append: bool = False
) -> None:
    """Log to stderr and, if given, to ``log_file`` (Snakemake's ``log:``), replacing old
    handlers; ``append``: after the file's earlier lines (a resumed job keeps the log of the
    attempt it continues), else the file is started afresh."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a" if append else "w"))
    for handler in handlers:
        root.addHandler(format_handler(handler))
    root.setLevel(level)
    logging.captureWarnings(True)


class _ConsoleWarnings(logging.StreamHandler):
    """The handler :func:`console_warnings` adds (its class marks it, so it is added once)."""


def console_warnings(name: str = "gigamil") -> None:
    """Print the warnings of logger ``name`` (and its children) on stderr as ``gigamil: warning:
    <message>``, the form of the workflow's other warnings. For the Snakemake main process,
    which parses the workflow (sheets, slides) with no logging set up: Python would print the
    bare message. Calling it again adds nothing."""
    logger = logging.getLogger(name)
    if any(isinstance(h, _ConsoleWarnings) for h in logger.handlers):
        return
    handler = _ConsoleWarnings(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("gigamil: warning: %(message)s"))
    logger.addHandler(handler)


def setup_script_logging(log_file: str | Path, keep_earlier: bool = False) -> None:
    """:func:`setup_logging` for a Snakemake script, plus its failure in the job's log.

    ``keep_earlier``: for a job that can resume (train_fold from ``last.pt``), ``log_file``
    keeps the lines of earlier attempts, and a line ``job started again`` begins this one's,
    so a killed attempt's log is not lost when the job runs again.

    Every script calls this first, before its other imports, so that an error while the script
    sets up (an import, a bad input) and any later one reach ``log_file`` with its traceback,
    not only Snakemake's terminal. The error is logged once (to stderr and the file); the
    interpreter then exits with status 1 as for any uncaught exception. An interrupt (Ctrl-C,
    which Snakemake passes on to its jobs) is one line, ``job interrupted``, without a
    traceback; the interpreter still ends by SIGINT, so Snakemake sees an interrupted job.
    """
    again = keep_earlier and Path(log_file).is_file() and Path(log_file).stat().st_size > 0
    setup_logging(log_file, append=keep_earlier)
    if again:
        logging.getLogger("gigamil").info(
            "job started again (the earlier attempts' lines are above; whether it resumes "
            "follows below)"
        )

    def log_uncaught(exc_type, exc, tb) -> None:
        log = logging.getLogger("gigamil")
        if issubclass(exc_type, KeyboardInterrupt):
            log.warning("job interrupted (Ctrl-C or SIGINT)")
        else:
            log.critical("job failed: %s: %s", exc_type.__name__, exc, exc_info=(exc_type, exc, tb))
        for handler in logging.getLogger().handlers:
            handler.flush()

    sys.excepthook = log_uncaught
