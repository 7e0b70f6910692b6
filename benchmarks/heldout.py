"""Held-out text for benchmarks: prose from the long descriptions (README files) of the
Python distributions installed in this environment, read with ``importlib.metadata``.

No test, plan or default of the project is fitted on it: the tests use MRPC and the
built-in corpus is the standard library's docstrings. Markdown and reStructuredText
markup is stripped roughly (code blocks, tables, links, headings), the prose is split
into sentences and paragraphs, and three sets are drawn with a fixed seed:

- ``short``: single sentences of 4-30 words (a median of about 13 tokens);
- ``medium``: paragraphs of 30-90 words;
- ``long``: runs of consecutive paragraphs of 130-190 words (up to about 256 tokens).

The exact texts depend on what is installed; the benchmark records their token lengths.
"""

from __future__ import annotations

import importlib.metadata as md
import random
import re

_CODE = re.compile(r"```.*?```|~~~.*?~~~", re.S)
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_RST_LINK = re.compile(r"`([^`<]*)<[^>]*>`_+")
_URL = re.compile(r"https?://\S+")
_MARK = re.compile(r"[*_`#>|]+")
_SPACE = re.compile(r"\s+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _paragraphs(text: str) -> list[str]:
    text = _CODE.sub("\n\n", text)
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        # Tables, code indented by 4, directives, lists of links, headings' underlines.
        if not lines or any(ln.startswith(("    ", "\t", "..", "|", "+-", "===", "---", "<")) for ln in lines):
            continue
        para = _SPACE.sub(" ", _MARK.sub(" ", _URL.sub(" ", _RST_LINK.sub(r"\1", _LINK.sub(r"\1", " ".join(lines))))))
        para = para.strip()
        words = para.split()
        # Prose: mostly alphabetic words, ends like a sentence.
        if len(words) >= 4 and para[-1:] in ".!?:" and sum(w.isalpha() for w in words) >= 0.6 * len(words):
            out.append(para)
    return out


def descriptions() -> list[list[str]]:
    """The prose paragraphs of each installed distribution's description, by name."""
    seen: set[str] = set()
    docs = []
    for dist in sorted(md.distributions(), key=lambda d: (d.metadata.get("Name") or "").lower()):
        name = (dist.metadata.get("Name") or "").lower()
        if not name or name in seen:
            continue
        seen.add(name)
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""  # type: ignore[attr-defined]
        paras = _paragraphs(str(body))
        if paras:
            docs.append(paras)
    return docs


def paragraph_runs(paras: list[str], low: int, high: int) -> list[str]:
    """Consecutive paragraphs joined until they hold ``low`` words; the runs of at most ``high``."""
    runs = []
    i = 0
    while i < len(paras):
        j, words = i, 0
        while j < len(paras) and words < low:
            words += len(paras[j].split())
            j += 1
        if low <= words <= high:
            runs.append(" ".join(paras[i:j]))
        i = j
    return runs


def heldout_sets(*, short: int = 2000, medium: int = 500, long: int = 200, seed: int = 0) -> dict[str, list[str]]:
    """The three sets (fewer texts where the installation holds fewer)."""
    docs = descriptions()
    sentences, paragraphs, runs = [], [], []
    for paras in docs:
        for p in paras:
            n = len(p.split())
            if 30 <= n <= 90:
                paragraphs.append(p)
            sentences += [s for s in _SENTENCE.split(p) if 4 <= len(s.split()) <= 30]
        runs += paragraph_runs(paras, 130, 190)  # consecutive paragraphs joined up to 130-190 words
    rng = random.Random(seed)
    out = {}
    for name, pool, n in (("short", sentences, short), ("medium", paragraphs, medium), ("long", runs, long)):
        pool = sorted(set(pool))
        rng.shuffle(pool)
        out[name] = pool[:n]
    return out


if __name__ == "__main__":
    sets = heldout_sets()
    for name, texts in sets.items():
        words = sorted(len(t.split()) for t in texts)
        print(f"{name}: {len(texts)} texts, median {words[len(words) // 2]} words; e.g. {texts[0][:100]!r}")
