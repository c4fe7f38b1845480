"""Logging set-up shared by the CLI and the Snakemake scripts.

Every line says what it belongs to: :func:`log_context` names the current unit of work (``fold 2
epoch 3/20``, ``fold 2 predict ext``) and the handlers set up here print it in brackets after the
level, so the interleaved output of folds trained in parallel stays readable.
"""

from __future__ import annotations

import atexit
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


JOB_DONE = "job done"  # the last line of a script's log when it ended without an error


def _unfinished_log(log_file: str | Path) -> bool:
    """``log_file`` holds an attempt that did not end with :data:`JOB_DONE` (killed, failed)."""
    path = Path(log_file)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - 4096))
        lines = fh.read().decode(errors="replace").rstrip().splitlines()
    return not (lines and lines[-1].endswith(JOB_DONE))


def setup_script_logging(log_file: str | Path) -> None:
    """:func:`setup_logging` for a Snakemake script, plus its failure in the job's log.

    Every script calls this first, before its other imports, so that an error while the script
    sets up (an import, a bad input) and any later one reach ``log_file`` with its traceback,
    not only Snakemake's terminal. The error is logged once (to stderr and the file); the
    interpreter then exits with status 1 as for any uncaught exception. An interrupt (Ctrl-C,
    which Snakemake passes on to its jobs) is one line, ``job interrupted``, without a
    traceback; the interpreter still ends by SIGINT, so Snakemake sees an interrupted job.

    A script that ends without an error logs :data:`JOB_DONE` last. When ``log_file`` holds an
    earlier attempt that did not (a job killed, e.g. by SLURM's time limit, or failed), it is
    kept and this attempt's lines follow a line ``job started again``: e.g. a killed training's
    log is not lost when the fold resumes. Otherwise the log starts afresh.
    """
    again = _unfinished_log(log_file)
    setup_logging(log_file, append=again)
    log = logging.getLogger("gigamil")
    if again:
        log.info("job started again (the earlier attempt above did not finish)")
    failed: list[bool] = []

    def log_done() -> None:
        if not failed:
            log.info(JOB_DONE)

    atexit.register(log_done)

    def log_uncaught(exc_type, exc, tb) -> None:
        failed.append(True)
        if issubclass(exc_type, KeyboardInterrupt):
            log.warning("job interrupted (Ctrl-C or SIGINT)")
        else:
            log.critical("job failed: %s: %s", exc_type.__name__, exc, exc_info=(exc_type, exc, tb))
        for handler in logging.getLogger().handlers:
            handler.flush()

    sys.excepthook = log_uncaught
