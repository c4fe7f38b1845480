"""Subcommands of the ``gigamil`` CLI.

Every module in this package is a subcommand. It defines::

    NAME: str                       # the subcommand name, e.g. "mask"
    HELP: str                       # one line for `gigamil --help`
    def add_arguments(parser: argparse.ArgumentParser) -> None
    def run(args: argparse.Namespace) -> int | None

Heavy imports (torch, openslide, zarr) go inside ``run`` so `gigamil --help` stays fast.
"""
