"""Sentences and sentence pairs shaped like MRPC's, built from the built-in corpus.

The Microsoft Research Paraphrase Corpus is not under a license that lets this repository
ship it, so the tests that ran on it run on text of the same shape instead: news-length
sentences (MRPC pairs with the all-MiniLM-L6-v2 tokenizer: mean 53 tokens, median 53,
95th percentile 74, max 103) made of plain words from the Python standard library's
docstrings (:func:`bucketwise.corpus.stdlib_docstrings`, which ships with Python). What
the tests assert holds for any text of these lengths; the sentences need not mean anything.
"""

from __future__ import annotations

import functools
import random
import re

from bucketwise.corpus import stdlib_docstrings

__all__ = ["sentences", "sentence_pairs"]

# A plain word, with the punctuation that may follow it: no code, no numbers, no markup.
_WORD = re.compile(r"^[A-Za-z][a-z]*[,.;]?$")
MEAN_WORDS, SD_WORDS, MIN_WORDS, MAX_WORDS = 20.3, 5.0, 6, 38


@functools.lru_cache(maxsize=1)
def _words() -> tuple[str, ...]:
    return tuple(w for text in stdlib_docstrings() for w in text.split() if _WORD.match(w))


def _sentence(rng: random.Random, n_words: int) -> str:
    words = _words()
    start = rng.randrange(len(words) - n_words)
    text = " ".join(words[start:start + n_words]).rstrip(",.;") + "."
    return text[0].upper() + text[1:]


def _length(rng: random.Random, mean: float) -> int:
    return max(MIN_WORDS, min(MAX_WORDS, round(rng.gauss(mean, SD_WORDS))))


def sentences(n: int, *, seed: int = 0) -> list[str]:
    """``n`` sentences of MRPC-like length (one side of a pair: about 25 tokens)."""
    rng = random.Random(seed)
    return [_sentence(rng, _length(rng, MEAN_WORDS)) for _ in range(n)]


def sentence_pairs(n: int, *, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` pairs whose two sides have about the same length, as paraphrases do."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        first = _length(rng, MEAN_WORDS)
        second = max(MIN_WORDS, min(MAX_WORDS, first + round(rng.gauss(0, 2))))
        pairs.append((_sentence(rng, first), _sentence(rng, second)))
    return pairs
