"""Readers: text files of the user's (one text per line, or JSONL), and the public data sets
the benchmarks and tests use."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = ["read_mrpc", "read_records", "read_texts", "record_texts", "text_of"]


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


def read_texts(path: str | Path) -> list[Any]:
    """Texts from a file: one per line, or JSONL (``.jsonl``/``.json``) where each line is a
    string, a ``[first, second]`` pair, or an object with ``text`` (and ``text_pair``)."""
    texts: list[Any] = []
    for n, item in _lines(path, "texts file"):
        text = text_of(item)
        if text is not None:
            texts.append(text)
        else:
            raise InputError(
                f"texts file {str(path)!r} line {n}: expected a string, a [first, second] pair or "
                f'{{"text": ...}}, got {json.dumps(item)[:80]!r}'
            )
    return texts


def read_records(path: str | Path) -> list[Any]:
    """Inputs of a text task from a file: one text per line, or JSONL (``.jsonl``/``.json``)
    where each line is any JSON value (a head's ``parse_record`` says what it takes:
    ``{"text", "text_pair"}``, ``{"query", "documents"}``, ``{"question", "context"}``)."""
    return [item for _, item in _lines(path, "input file")]


def text_of(item: Any) -> Any:
    """A text or pair from a JSON value (a string, ``[first, second]`` or ``{"text", "text_pair"}``),
    or None for anything else (a ``text_pair`` that is not a string included)."""
    if isinstance(item, str):
        return item
    if isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return (item[0], item[1])
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        pair = item.get("text_pair")
        if pair is None:
            return item["text"]
        return (item["text"], pair) if isinstance(pair, str) else None
    return None


def _lines(path: str | Path, what: str) -> list[tuple[int, Any]]:
    """(line number, value) of each non-blank line: the line itself, or in JSONL
    (``.jsonl``/``.json``) its JSON value. Refuses an unreadable or empty file."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as err:
        raise InputError(f"{what} {str(path)!r} cannot be read: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise InputError(f"{what} {str(path)!r} is not UTF-8 text: {err}") from err
    jsonl = path.suffix in (".jsonl", ".json")
    out: list[tuple[int, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not jsonl:
            out.append((n, line))
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as err:
            raise InputError(f"{what} {str(path)!r} line {n} is not valid JSON: {err.msg}") from None
    if not out:
        raise InputError(f"{what} {str(path)!r} holds no {'texts' if what == 'texts file' else 'inputs'}; give one per line")
    return out


def record_texts(records: list[Any]) -> list[Any]:
    """What a model reads of each record, as texts and pairs (for planning): a text, a
    ``(text, text_pair)``, ``(question, context)``, or one ``(query, document)`` per document."""
    out: list[Any] = []
    for n, item in enumerate(records, 1):
        text = text_of(item)
        if text is not None:
            out.append(text)
        elif isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(item.get("context"), str):
            out.append((item["question"], item["context"]))
        elif isinstance(item, dict) and isinstance(item.get("query"), str) and isinstance(item.get("documents"), list):
            out += [(item["query"], d) for d in item["documents"] if isinstance(d, str)]
        else:
            raise InputError(f"input {n}: expected a string, a [first, second] pair, or an object with text "
                             f"(and text_pair), question and context, or query and documents; got {str(item)[:80]!r}")
    return out
