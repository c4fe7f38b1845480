"""The ``gigamil`` console command: each pipeline stage as a subcommand."""

from __future__ import annotations

import argparse
import logging
import os
import pkgutil
import sys
from importlib import import_module
from types import ModuleType

from gigamil import __version__, commands
from gigamil.errors import GigamilError
from gigamil.logutil import setup_logging


def _command_modules() -> list[ModuleType]:
    mods = [  # a private module (_argtypes) is a helper, not a command
        import_module(f"gigamil.commands.{m.name}")
        for m in pkgutil.iter_modules(commands.__path__)
        if not m.name.startswith("_")
    ]
    return sorted(mods, key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gigamil",
        description="Whole-slide image classification with end-to-end attention MIL. "
        "Each pipeline stage is a subcommand; `snakemake` runs them all.",
    )
    parser.add_argument("--version", action="version", version=f"gigamil {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log", metavar="FILE", help="also write the log to FILE")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def error_text(exc: Exception) -> str:
    """An error message as the command line prints it: one line, except that the items of a
    list (lines starting with ``-``: a sheet's problems) and indented lines (the rows of a bad
    column, a YAML error's snippet and its ``^``, whose alignment is kept) keep a line each,
    indented by two more spaces; every other line break and run of spaces is one space."""
    out: list[str] = []
    for line in str(exc).splitlines():
        text = " ".join(line.split())
        if out and text and line[:1] in (" ", "\t"):
            out.append(f"\n  {line.rstrip()}")
        elif out and text and line[:1] == "-":
            out.append(f"\n  {text}")
        elif text:
            out.append(f" {text}" if out else text)
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        setup_logging(args.log, logging.DEBUG if args.verbose else logging.INFO)
    except OSError as exc:  # --log names a folder, or a file that cannot be written
        print(f"gigamil: error: --log {args.log}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        code = args._run(args)
    except GigamilError as exc:
        print(f"gigamil {args.command}: error: {error_text(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. head, which stopped reading: no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (Python docs, signal)
        return 141  # 128 + SIGPIPE, as a shell command reports it
    except OSError as exc:  # a path that is not what it must be: one line, the traceback at -v
        logging.getLogger("gigamil").debug("%s", exc, exc_info=True)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"gigamil {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gigamil {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
