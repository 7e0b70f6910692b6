"""The packer: sequence lengths into rows of a packed bucket, first-fit decreasing (pure).

A packed bucket's row holds several sequences, each in a :class:`Slot` (sequence index,
offset in the row, length). :func:`pack` places lengths into rows; the router
(:meth:`bucketwise.router.Router.place`) cuts the rows into runs. Nothing here knows about
models: :mod:`bucketwise.models.packing` writes the rows' arrays and wraps the models.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .errors import ConfigError, InputError

__all__ = ["Slot", "Packing", "pack", "next_fit_rows", "filled"]


class Slot(NamedTuple):
    """One sequence's place in a packed row: ``sequence``, its index in the caller's list, the
    ``offset`` of its first position in the row, and its ``length`` (positions
    ``offset .. offset + length - 1``)."""

    sequence: int
    offset: int
    length: int


@dataclass(frozen=True)
class Packing:
    """What :func:`pack` returns.

    ``rows``: each row's slots in offset order (the first slot at offset 0, each next one
    right after the previous); row ``r``'s ``k``-th slot is segment ``k + 1`` of that row.
    ``unpacked``: indices of the sequences longer than a row, in input order; they were
    not placed and run in unpacked buckets.
    """

    rows: tuple[tuple[Slot, ...], ...]
    unpacked: tuple[int, ...]
    row_length: int
    max_segments: int
    row_lengths: tuple[int, ...] = ()  # each row's own length, where rows of several lengths were packed

    def length_of(self, r: int) -> int:
        """The length of row ``r``: its own where rows of several lengths were packed."""
        return self.row_lengths[r] if self.row_lengths else self.row_length

    @property
    def positions(self) -> int:
        """Real positions placed (the sum of the placed lengths)."""
        return sum(s.length for row in self.rows for s in row)

    @property
    def padding(self) -> float:
        """Share of the rows' positions that are padding (0 with no rows)."""
        total = sum(self.row_lengths) if self.row_lengths else len(self.rows) * self.row_length
        return 1.0 - self.positions / total if total else 0.0


def _check_layout_args(row_length: int, max_segments: int) -> None:
    for name, value in (("row_length", row_length), ("max_segments", max_segments)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"packing: {name} must be a positive integer, got {value!r}")


def _check_lengths(lengths: Sequence[int]) -> list[int]:
    out = []
    for i, n in enumerate(lengths):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InputError(f"packing: length {n!r} of sequence {i} is not a positive integer; "
                             "drop empty sequences before packing")
        out.append(int(n))
    return out


def pack(lengths: Sequence[int], row_length: int | Sequence[int], max_segments: int) -> Packing:
    """Place sequences of ``lengths`` into rows, first-fit decreasing.

    Sequences are taken longest first (ties in input order); each goes into the first row
    (in the order rows were opened) with room for its length and fewer than
    ``max_segments`` segments, else into a new row. Sequences longer than ``row_length``
    are left out, in :attr:`Packing.unpacked`. Deterministic; O(n log n): a segment tree
    over the rows' free room finds the first row that fits.

    ``row_length`` may list several lengths (a packed plan's bucket lengths): a new row is
    opened at the shortest that holds the sequence that opens it, and
    :attr:`Packing.row_lengths` gives each row's. Longer rows open first, so shorter
    sequences fill their room before a shorter row is opened.
    """
    edges = sorted({row_length} if isinstance(row_length, (int, np.integer)) else set(row_length))
    if not edges:
        raise ConfigError("packing: row_length lists no lengths")
    for edge in edges:
        _check_layout_args(edge, max_segments)
    several = len(edges) > 1
    row_length = int(edges[-1])
    sizes = _check_lengths(lengths)
    order = sorted((i for i in range(len(sizes)) if sizes[i] <= row_length), key=lambda i: (-sizes[i], i))
    unpacked = tuple(i for i in range(len(sizes)) if sizes[i] > row_length)
    # Segment tree over row slots (at most one row per sequence): each leaf holds a row's
    # free room, -1 once the row is full of segments or not opened yet; inner nodes the max.
    size = 1
    while size < max(1, len(order)):
        size *= 2
    tree = [-1] * (2 * size)
    rows: list[list[Slot]] = []
    used: list[int] = []
    capacity: list[int] = []
    for i in order:
        n = sizes[i]
        if tree[1] >= n:
            node = 1
            while node < size:
                node = 2 * node if tree[2 * node] >= n else 2 * node + 1
            r = node - size
        else:
            r = len(rows)
            rows.append([])
            used.append(0)
            capacity.append(int(edges[bisect.bisect_left(edges, n)]))
        rows[r].append(Slot(i, used[r], n))
        used[r] += n
        node = r + size
        tree[node] = capacity[r] - used[r] if len(rows[r]) < max_segments else -1
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return Packing(tuple(tuple(row) for row in rows), unpacked, row_length, max_segments,
                   tuple(capacity) if several else ())


def filled(row: Sequence[Slot]) -> int:
    """How much of a row its slots fill: where its last slot ends (0 for an empty row)."""
    return row[-1].offset + row[-1].length if row else 0


def next_fit_rows(lengths: Sequence[int], row_length: int, max_segments: int) -> int:
    """Rows the simplest greedy needs: longest first, a new row whenever the current one
    lacks room or segments (next-fit decreasing). :func:`pack` never needs more; a
    benchmark's and a test's yardstick. Sequences longer than a row are not counted."""
    _check_layout_args(row_length, max_segments)
    rows = used = segments = 0
    for n in sorted((n for n in _check_lengths(lengths) if n <= row_length), reverse=True):
        if rows == 0 or used + n > row_length or segments == max_segments:
            rows, used, segments = rows + 1, 0, 0
        used, segments = used + n, segments + 1
    return rows
