"""Logging set-up shared by the CLI and the Snakemake scripts.

Every line says what it belongs to: :func:`log_context` names the current unit of work (``fold 2
epoch 3/20``, ``fold 2 predict ext``) and the handlers set up here print it in brackets after the
level, so the interleaved output of folds trained in parallel stays readable.
"""

from __future__ import annotations

import atexit
import logging
import os
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
    log_file: str | Path | None = None,
    level: int = logging.INFO,
    append: bool = False,
    also: str | Path | None = None,
) -> None:
    """Log to stderr and, if given, to ``log_file`` (Snakemake's ``log:``), replacing old
    handlers; ``append``: after the file's earlier lines, else the file is started afresh (then
    written in append mode all the same, so a child process appending to it, e.g. torchrun's,
    is not overwritten); ``also``: a second file the lines are appended to."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if isinstance(handler, logging.FileHandler):  # an earlier call's: its file is released
            handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    for path in (log_file, also):
        if path is None:
            continue
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if path == log_file and not append:
            Path(path).write_text("")
        handlers.append(logging.FileHandler(path, mode="a"))
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


def unfinished_log(log_file: str | Path) -> Path:
    """``<log_file>.unfinished``: the lines of a job's attempts since its last finished one
    (Snakemake deletes a job's ``log:`` file before it runs the job again, not this one)."""
    return Path(f"{log_file}.unfinished")


def setup_script_logging(log_file: str | Path) -> None:
    """:func:`setup_logging` for a Snakemake script, plus its failure in the job's log.

    Every script calls this first, before its other imports, so that an error while the script
    sets up (an import, a bad input) and any later one reach ``log_file`` with its traceback,
    not only Snakemake's terminal. The error is logged once (to stderr and the file); the
    interpreter then exits with status 1 as for any uncaught exception. An interrupt (Ctrl-C,
    which Snakemake passes on to its jobs) is one line, ``job interrupted``, without a
    traceback; the interpreter still ends by SIGINT, so Snakemake sees an interrupted job.

    A script that ends without an uncaught exception logs :data:`JOB_DONE` last (``sys.exit``
    with an error status is not told apart: no script calls it). Its lines also go to
    :func:`unfinished_log`, deleted after ``job done``: when a job starts and that file exists,
    the earlier attempt did not finish (killed, e.g. by SLURM's time limit, or failed), and its
    lines open ``log_file``, followed by ``job started again`` and this attempt's: e.g. a killed
    training's log is not lost when the fold resumes. torchrun's child processes (multi-GPU
    training) write to ``log_file`` only.
    """
    shadow = unfinished_log(log_file)
    earlier = shadow.read_text(errors="replace") if shadow.is_file() else ""
    if earlier:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        Path(log_file).write_text(earlier)
    setup_logging(log_file, append=bool(earlier), also=shadow)
    log = logging.getLogger("gigamil")
    if earlier:
        log.info("job started again (the earlier attempt above failed or was interrupted)")
    failed: list[bool] = []

    def log_done() -> None:
        if failed:
            return
        log.info(JOB_DONE)
        for handler in list(logging.getLogger().handlers):
            if getattr(handler, "baseFilename", None) == os.path.abspath(shadow):
                handler.close()
                logging.getLogger().removeHandler(handler)
        shadow.unlink(missing_ok=True)

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
