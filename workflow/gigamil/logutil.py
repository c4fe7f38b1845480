"""Logging set-up shared by the CLI and the Snakemake scripts."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, if given, to ``log_file`` (Snakemake's ``log:``), replacing old handlers."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)


def setup_script_logging(log_file: str | Path) -> None:
    """:func:`setup_logging` for a Snakemake script, plus its failure in the job's log.

    Every script calls this first, before its other imports, so that an error while the script
    sets up (an import, a bad input) and any later one reach ``log_file`` with its traceback,
    not only Snakemake's terminal. The error is logged once (to stderr and the file); the
    interpreter then exits with status 1 as for any uncaught exception.
    """
    setup_logging(log_file)

    def log_uncaught(exc_type, exc, tb) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
            return
        logging.getLogger("gigamil").critical(
            "job failed: %s: %s", exc_type.__name__, exc, exc_info=(exc_type, exc, tb)
        )
        for handler in logging.getLogger().handlers:
            handler.flush()

    sys.excepthook = log_uncaught
