"""The ``bucketwise`` command line. Thin: one module per command, each parses its
arguments and calls the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._version import __version__
from ..data import read_texts
from ..errors import BucketwiseError
from . import backends, compile, embed, inspect, plan, predict, serve

__all__ = ["main", "build_parser", "read_texts"]

COMMANDS = (embed, plan, compile, predict, serve, inspect, backends)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bucketwise",
        description="Run variable-shape inputs on fixed-shape compilers: compile per bucket, pad, run, unpad.",
    )
    parser.add_argument("--version", action="version", version=f"bucketwise {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "limit", None) is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    if getattr(args, "workers", None) is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    try:
        return int(args.func(args))
    except BucketwiseError as err:
        # Every error bucketwise raises on purpose names the value and the fix: one line,
        # exit 2. Anything else is a bug, and keeps its traceback.
        print(f"bucketwise: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
