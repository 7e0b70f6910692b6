"""The built-in corpus: paragraphs of the Python standard library's docstrings.

Every Python installation carries it, it is real English prose of widely varied length,
and reading it needs no network and no ``../shared``. Modules are parsed with ``ast``,
never imported, so building the corpus has no side effects.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from collections.abc import Iterator

__all__ = ["stdlib_docstrings", "CORPUS_MODULES"]

CORPUS_MODULES: tuple[str, ...] = (
    "abc", "argparse", "ast", "asyncio.events", "asyncio.tasks", "base64", "bisect", "calendar",
    "collections", "concurrent.futures._base", "configparser", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum", "fractions",
    "functools", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client", "imaplib",
    "inspect", "ipaddress", "json", "logging", "mailbox", "mimetypes", "ntpath", "operator",
    "optparse", "os", "pathlib", "pickle", "pprint", "queue", "random", "shlex", "shutil",
    "smtplib", "socket", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "tokenize", "traceback", "typing", "unittest.case", "urllib.parse",
    "urllib.request", "uuid", "warnings", "weakref", "zipfile",
)

_SPACE = re.compile(r"\s+")


def _docstrings(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def stdlib_docstrings(*, min_words: int = 4, max_chars: int = 1000, limit: int | None = None) -> list[str]:
    """Distinct docstring paragraphs of :data:`CORPUS_MODULES`, in a stable order.

    Paragraphs are split on blank lines with whitespace collapsed; doctest examples and
    paragraphs under ``min_words`` words or over ``max_chars`` characters are dropped.
    The exact texts follow the running Python version's standard library. With ``limit``,
    the first ``limit`` of them, reading only the modules that hold them.
    """
    seen: set[str] = set()
    texts: list[str] = []
    for name in CORPUS_MODULES:
        if limit is not None and len(texts) >= limit:
            break
        spec = importlib.util.find_spec(name) if _parent_exists(name) else None
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        with open(spec.origin, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=spec.origin)
        for doc in _docstrings(tree):
            for para in doc.split("\n\n"):
                if ">>>" in para:
                    continue
                text = _SPACE.sub(" ", para).strip()
                if len(text.split()) < min_words or len(text) > max_chars or text in seen:
                    continue
                seen.add(text)
                texts.append(text)
    return texts[:limit] if limit is not None else texts


def _parent_exists(name: str) -> bool:
    # find_spec("a.b") imports package "a"; only do that for packages that exist.
    head = name.split(".")[0]
    return importlib.util.find_spec(head) is not None
