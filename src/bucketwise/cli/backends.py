"""``bucketwise backends``: which backends are installed."""

from __future__ import annotations

import argparse

from ..backends.base import REQUIREMENTS, backend_names, is_available


def add_parser(sub: argparse._SubParsersAction) -> None:
    backends = sub.add_parser("backends", help="list backends and whether their packages are installed")
    backends.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name in backend_names():
        extras = sorted({extra for _, extra in REQUIREMENTS.get(name, ())})
        state = "available" if is_available(name) else f"missing: pip install 'bucketwise[{','.join(extras)}]'"
        print(f"{name:<14}{state}")
    return 0
