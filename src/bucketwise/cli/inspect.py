"""``bucketwise inspect``: list (or clear) the artifact cache."""

from __future__ import annotations

import argparse

from ._common import add_cache_options, add_json_option, printer, write_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    inspect = sub.add_parser(
        "inspect",
        help="list the artifact cache: model, backend, bucket, size and age",
        description="List the entries of the artifact cache: model, backend and version, bucket, size on disk, "
                    "measured resident memory, compile time and age.",
    )
    add_cache_options(inspect, optional=False)
    add_json_option(inspect, "the listing")
    inspect.add_argument("--clear", action="store_true", help="remove every entry")
    inspect.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..runtime.cache import ArtifactCache
    from ..runtime.memory import format_bytes
    from ..runtime.tables import cache_rows, cache_table

    say = printer(args)
    cache = ArtifactCache(args.cache_dir)
    if args.clear:
        n = cache.clear()
        say(f"removed  {n} entries from {cache.root}")
        return 0
    entries = sorted(cache.entries(), key=lambda e: (e.model_name, e.backend, e.bucket.sizes if e.bucket else ()))
    say(f"cache    {cache.root}: {len(entries)} entries, {format_bytes(sum(e.disk_bytes for e in entries))} on disk")
    if entries:
        for line in cache_table(entries):
            say(line)
    write_json(args.json, {"root": str(cache.root), "entries": cache_rows(entries)})
    return 0
