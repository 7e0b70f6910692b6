"""``bucketwise backends``: which backends are installed, and the options each takes."""

from __future__ import annotations

import argparse

from ..backends.base import INSTALL_HINTS, REQUIREMENTS, backend_names, backend_options, is_available


def add_parser(sub: argparse._SubParsersAction) -> None:
    backends = sub.add_parser(
        "backends", help="list backends, whether their packages are installed, and their options",
        description="List every backend, whether its packages are installed, and the options it takes "
                    "(set them with --backend-option KEY=VALUE on embed, serve, compile and predict).")
    backends.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name in backend_names():
        extras = sorted({extra for _, extra in REQUIREMENTS.get(name, ())})
        if is_available(name):
            state = "available"
            if name == "cuda-graphs" and not _has_cuda():
                state = "installed, but this machine has no CUDA GPU (torch.cuda.is_available() is False)"
        elif name in INSTALL_HINTS:
            state = f"not installed: {INSTALL_HINTS[name]}"
        else:
            state = f"not installed: pip install 'bucketwise[{','.join(extras)}]'"
        print(f"{name:<14}{state}")
        try:
            options = backend_options(name)
        except ImportError:
            continue
        if options:
            print(" " * 14 + "options: " + ", ".join(f"{k}={v!r}" for k, v in options.items()))
    return 0


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())
