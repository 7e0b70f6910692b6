"""Cross-architecture parity: bucketed sentence embeddings against SentenceTransformer(DIR).encode.

Four small encoders built offline with random weights and saved by sentence-transformers,
each with its own pooling (tests/tiny_encoders.py): BERT with CLS pooling, DistilBERT with
mean pooling and normalisation, MPNet with max pooling, RoBERTa (a BPE tokenizer trained
here) with last-token pooling, a dense layer and normalisation. Each runs on every CPU
backend with buckets batch {1, 4} x seq {16, 48}; the texts include a sentence pair and one
text longer than the models' max_seq_length (48). Prints model x backend x max abs diff
(after normalising) and min cosine; writes benchmarks/results/encoder_parity.json.

    python benchmarks/bench_encoders.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from _common import ROOT, save, table

sys.path.insert(0, str(ROOT / "tests"))
import tiny_encoders as te  # noqa: E402

from bucketwise import Plan  # noqa: E402
from bucketwise.models.text import SentenceEmbedder  # noqa: E402

BACKENDS = ("eager", "torchscript", "onnxruntime", "openvino")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="results JSON (default benchmarks/results/encoder_parity.json)")
    args = parser.parse_args(argv)
    from sentence_transformers import SentenceTransformer

    plan = Plan.grid(batch=[1, 4], seq=[16, te.MAX_SEQ_LENGTH])
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in te.ARCHITECTURES:
            folder = te.build(name, Path(tmp))
            want = SentenceTransformer(str(folder), device="cpu").encode(te.TEXTS, convert_to_numpy=True)
            want = want / np.linalg.norm(want, axis=1, keepdims=True)
            for backend in BACKENDS:
                embedder = SentenceEmbedder.default(model=str(folder), backend=backend, plan=plan, progress=False)
                got = embedder.embed(te.TEXTS)
                got = got / np.linalg.norm(got, axis=1, keepdims=True)
                diff, cosine = float(np.abs(got - want).max()), float((got * want).sum(axis=1).min())
                ok = diff <= 1e-4 and cosine >= 0.99999
                rows.append([name, backend, f"{diff:.1e}", f"{cosine:.7f}", "yes" if ok else "NO"])
                results.append({"model": name, "backend": backend, "max_abs_diff": diff, "min_cosine": cosine, "ok": ok})
                embedder.model.close()
    print(table(rows, ["model (pooling)", "backend", "max abs diff", "min cosine", "<= 1e-4"]))
    print(f"wrote {save('encoder_parity', {'texts': len(te.TEXTS), 'plan': plan.to_json(), 'results': results}, args.out)}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
