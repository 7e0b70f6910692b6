"""Readers for the public data sets the benchmarks and tests use."""

from __future__ import annotations

import csv
from pathlib import Path

from .errors import InputError

__all__ = ["read_mrpc"]


def read_mrpc(path: str | Path) -> list[tuple[str, str]]:
    """Sentence pairs of a Microsoft Research Paraphrase Corpus file (``msr_paraphrase_*.txt``).

    The files are tab-separated with a header (Quality, #1 ID, #2 ID, #1 String, #2 String)
    and start with a UTF-8 byte-order mark.
    """
    p = Path(path)
    try:
        with p.open(encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except OSError as err:
        raise InputError(f"MRPC file {str(p)!r} cannot be read: {err.strerror}") from err
    if not rows or len(rows[0]) < 5 or rows[0][3] != "#1 String":
        raise InputError(f"{str(p)!r} is not an MRPC file: expected a header ending '#1 String, #2 String'")
    return [(r[3], r[4]) for r in rows[1:] if len(r) >= 5]
