"""``bucketwise inspect``: list, prune or clear the artifact cache."""

from __future__ import annotations

import argparse

from ._common import add_cache_options, add_json_option, cache_at, printer, write_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    inspect = sub.add_parser(
        "inspect",
        help="list the artifact cache: model, backend, bucket, size and age",
        description="List the entries of the artifact cache: model, backend and version, bucket, size on disk, "
                    "measured resident memory, compile time and age.",
    )
    add_cache_options(inspect, optional=False)
    add_json_option(inspect, "the listing")
    inspect.add_argument("--clear", action="store_true", help="remove every entry, the shared files and the lock files")
    inspect.add_argument("--prune", action="store_true",
                         help="remove entries this machine and these package versions cannot load (another CPU, "
                              "another backend version), and with --older-than those unused that long; with "
                              "--cache-max-size, then evict the least recently used past it")
    inspect.add_argument("--older-than", type=float, metavar="DAYS", help="with --prune: also entries unused for DAYS days")
    inspect.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..runtime.cache import ArtifactCache
    from ..runtime.memory import format_bytes
    from ..runtime.tables import cache_rows, cache_table

    say = printer(args)
    cache: ArtifactCache = cache_at(args)
    if args.older_than is not None and not args.prune:
        raise ConfigError("--older-than goes with --prune")
    if args.clear:
        n = cache.clear()
        say(f"removed  {n} entries from {cache.root}")
        return 0
    if args.prune:
        pruned, evicted = cache.prune(older_than_days=args.older_than), cache.evict()
        say(f"removed  {len(pruned)} entries that cannot load here or were unused"
            + (f" for {args.older_than:g} days" if args.older_than is not None else "")
            + (f", and evicted {len(evicted)} past {format_bytes(cache.max_bytes)}" if cache.max_bytes else ""))
    entries = sorted(cache.entries(), key=lambda e: (e.model_name, e.backend, e.bucket.sizes if e.bucket else ()))
    say(f"cache    {cache.root}: {len(entries)} entries, {format_bytes(cache.disk_bytes())} on disk "
        "(files shared between entries counted once)")
    if entries:
        for line in cache_table(entries):
            say(line)
    write_json(args.json, {"root": str(cache.root), "entries": cache_rows(entries)})
    return 0
