"""``bucketwise predict``: texts through a text model with its head (``--input``), or a folder of
images through a bucketed image model."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError
from ..models.frontend import SIDES, TRUNCATIONS
from ..models.heads import AGGREGATIONS
from ..models.tasks import TASKS
from ..router import OVERFLOW_POLICIES
from ..runtime.tables import hits_table
from ._common import (
    add_backend_options,
    add_cache_options,
    add_json_option,
    add_pack_option,
    backend_options,
    cache_from_args,
    check_pack,
    image_plan,
    printer,
    sizes,
    text_plans,
    write_json,
)

# The text flags, each named as the head option it sets (a task refuses those its head does not take).
TEXT_OPTIONS = ("top_k", "raw_scores", "top_n", "aggregation_strategy", "max_answer_len", "doc_stride", "stride")


def add_parser(sub: argparse._SubParsersAction) -> None:
    predict = sub.add_parser(
        "predict",
        help="run texts (--input) through a text model with its head, or a folder of images through an image model",
        description=(
            "Texts: run every input of --input FILE through --model DIR (a local Hugging Face folder) for its task, "
            "read from the folder (or --task): text-classification, text-ranking, token-classification, "
            "question-answering or feature-extraction; one JSON line per input, in the Hugging Face pipelines' "
            "formats. Images: run every image of FOLDER through --model on --backend, one compiled artifact per "
            "bucket of --plan (plan one with `bucketwise plan FOLDER`). Classifiers write top-k classes as JSONL, "
            "detectors COCO-style JSON (boxes in each image's own pixels), segmentation models one JSONL "
            "line per image with its class pixel counts."
        ),
    )
    predict.add_argument("folder", metavar="FOLDER", nargs="?",
                         help="images (.jpg, .png, ...; other files are skipped); leave out for text (--input)")
    predict.add_argument("--model", help="a text model folder (with --input); or an image model: resnet50 (default), "
                                         "fasterrcnn, a torchvision model name, or path/to/file.py:function returning (module, spec)")
    predict.add_argument("--input", metavar="FILE",
                         help="text inputs: one text per line, or JSONL (.jsonl) of {\"text\", \"text_pair\"}, "
                              "{\"query\", \"documents\"} or {\"question\", \"context\"} objects")
    predict.add_argument("--task", choices=TASKS, help="the text task (default: read from the folder's architectures)")
    predict.add_argument("--plan", metavar="PLAN.json", help="buckets from a plan file (text: batch x seq; images: height x width)")
    predict.add_argument("--batch-sizes", type=sizes, metavar="1,8", help="text: batch buckets (as embed)")
    predict.add_argument("--seq-sizes", type=sizes, metavar="16,32,...", help="text: sequence buckets (as embed)")
    add_backend_options(predict)
    add_pack_option(predict)
    predict.add_argument("--output", metavar="FILE", help="where to write (default predictions.jsonl, or .json for detectors)")
    predict.add_argument("--top-k", type=int, help="classes per input: image classifiers (default 5), text-classification "
                                                   "(default 1), question-answering answers (default 1)")
    predict.add_argument("--raw-scores", action="store_true", help="text-classification, text-ranking: logits, not scores")
    predict.add_argument("--top-n", type=int, help="text-ranking: the best N documents per query (default all)")
    predict.add_argument("--aggregation-strategy", choices=AGGREGATIONS,
                         help="token-classification: none (default), simple, first, average or max, as Hugging Face's")
    predict.add_argument("--max-answer-len", type=int, help="question-answering: longest answer in tokens (default 15)")
    predict.add_argument("--doc-stride", type=int,
                         help="question-answering: tokens shared by windows of a context longer than the largest bucket")
    predict.add_argument("--stride", type=int, help="text-ranking, token-classification: tokens shared by windows")
    predict.add_argument("--truncation", choices=TRUNCATIONS, default="longest_first",
                         help="how a pair is cut when it must be (text-classification with --overflow truncate)")
    predict.add_argument("--truncation-side", choices=SIDES, default="right", help="which end is cut (default right)")
    predict.add_argument("--overflow", default="error", choices=OVERFLOW_POLICIES,
                         help="text longer than the largest bucket: error (default), truncate, fallback; text-ranking, "
                              "token-classification and question-answering window it instead (truncate: ranking keeps the first window)")
    predict.add_argument("--score-threshold", type=float, metavar="S",
                         help="Faster R-CNN detectors: drop boxes scoring below S (default 0.05)")
    predict.add_argument("--resize", action="store_true",
                         help="shrink images larger than every bucket to fit (else they are an error)")
    add_cache_options(predict, optional=True)
    add_json_option(predict, "the run's report")
    predict.add_argument("--no-progress", action="store_true", help="hide progress bars")
    predict.set_defaults(func=run)


def run_text(args: argparse.Namespace) -> int:
    """``predict --input FILE``: a text model with its head, one JSON line per input."""
    from ..data import read_records
    from ..models.encoders import model_dir
    from ..models.tasks import folder_task, head_class

    say = printer(args)
    if args.folder:
        raise ConfigError(f"give text inputs with --input FILE, or images as FOLDER, not both (got FOLDER {args.folder!r})")
    if not args.input:
        raise ConfigError("a text model reads its inputs from --input FILE (one text per line, or JSONL)")
    if args.model is None and args.task not in (None, "feature-extraction"):
        raise ConfigError(f"--task {args.task} needs --model DIR, a folder with that head; the bundled "
                          "all-MiniLM-L6-v2 is a sentence encoder")
    task = "feature-extraction" if args.model is None else folder_task(model_dir(args.model)).check(args.task)
    check_pack(args)
    records = read_records(args.input)  # before loading the model, so a bad file fails in a blink
    options = {k: v for k, v in vars(args).items() if k in TEXT_OPTIONS and v not in (None, False)}
    cls = head_class(task)
    allowed = () if task == "feature-extraction" else cls.options
    unknown = [f"--{k.replace('_', '-')}" for k in options if k not in allowed]
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not for {task}" + (f"; it takes {', '.join('--' + k.replace('_', '-') for k in allowed)}"
                                                                    if allowed else ""))
    inputs = None if task == "feature-extraction" else [cls.parse_record(r, f"input {i + 1}") for i, r in enumerate(records)]
    # The default buckets stop at the model's longest input, so leave them to the head
    # (packed, they are rows x row length: packed_text_plan).
    given, sized_for = text_plans(args, head_default=True)
    start = time.perf_counter()
    head = cls.default(backend=args.backend, plan=given, overflow=args.overflow, progress=not args.no_progress,
                       model=args.model, cache=cache_from_args(args),
                       backend_options=backend_options(args, sized_for),
                       truncation=args.truncation, truncation_side=args.truncation_side, pack=args.pack)
    compile_s = time.perf_counter() - start
    plan = head.model.plan
    start = time.perf_counter()
    if task == "feature-extraction":
        vectors = head.embed(read_texts_of(records), progress=not args.no_progress)
        results: list[Any] = [{"embedding": [float(x) for x in v]} for v in vectors]
    else:
        results = head.predict(inputs, **options, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    output = Path(args.output or "predictions.jsonl")
    with output.open("w") as f:
        for result in results:
            f.write(json.dumps(result) + "\n")
    stats = head.model.stats
    say(f"model    {args.model or 'all-MiniLM-L6-v2'} ({task}) on {args.backend}, {len(plan)} buckets, "
        f"ready in {compile_s:.1f} s")
    say(f"inputs   {len(records)} from {args.input} in {seconds:.2f} s ({len(records) / seconds:,.1f}/s); "
        f"padding {stats.padding_waste:.1%}" + (f"; overflow {dict(stats.overflow)}" if stats.overflow else ""))
    if args.pack is not None:
        # Each ranked document is a (query, document) text of its own.
        texts = sum(len(docs) for _, docs in inputs or ()) if task == "text-ranking" else len(records)
        say(f"packing  up to {args.pack} texts per row, {sum(stats.hits.values())} runs for {texts} texts")
    say("bucket hits:")
    for line in hits_table(stats, plan):
        say(line)
    say(f"wrote    {output}")
    write_json(args.json, {"model": args.model, "task": task, "backend": args.backend, "plan": plan.to_json(),
                           "pack": args.pack, "inputs": len(records), "seconds": seconds, "compile_seconds": compile_s,
                           "inputs_per_second": len(records) / seconds, "output": str(output),
                           "padding_waste": stats.padding_waste, "stats": stats.as_dict()})
    head.model.close()
    return 0


def read_texts_of(records: list[Any]) -> list[Any]:
    """Texts and pairs of feature-extraction records: strings, [a, b] or {"text", "text_pair"}."""
    from ..data import text_of

    texts = [text_of(r) for r in records]
    bad = next((i for i, t in enumerate(texts) if t is None), None)
    if bad is not None:
        raise InputError(f'input {bad + 1}: feature-extraction takes texts, [a, b] pairs or {{"text": ...}}')
    return texts


def run(args: argparse.Namespace) -> int:
    if args.input or args.task or (args.folder is None and args.model and Path(args.model, "config.json").is_file()):
        return run_text(args)
    from tqdm.auto import tqdm

    from .._optional import require
    from ..backends.base import get_backend
    from ..models.vision import ImageModel
    from ..models.zoo import load_image_model
    from ..planning.observe import image_files, unreadable_image
    from ..runtime.model import BucketedModel

    say = printer(args)
    if args.pack is not None:
        raise ConfigError("--pack packs texts into the rows of text buckets; image models do not pack: drop --pack")
    Image = require("PIL.Image", "images", purpose="reading images")
    if args.folder is None:
        raise ConfigError("give a FOLDER of images, or --input FILE with a text --model DIR")
    args.model = args.model or "resnet50"
    args.top_k = 5 if args.top_k is None else args.top_k
    folder = Path(args.folder)
    files = image_files(folder)
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    module, spec, kind = load_image_model(args.model, score_threshold=args.score_threshold)
    plan = image_plan(args.plan, spec)
    start = time.perf_counter()
    backend = get_backend(args.backend, **backend_options(args, plan))
    bm = BucketedModel(module, spec, plan, backend=backend, cache=cache_from_args(args))
    bm.compile(progress=not args.no_progress)
    compile_s = time.perf_counter() - start
    images = ImageModel(bm, resize=args.resize)
    results = []
    start = time.perf_counter()
    for path in tqdm(files, desc="predict", unit="image", disable=args.no_progress):
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError
            raise unreadable_image(path, folder, err) from None
        results.append((path.relative_to(folder).as_posix(), image.height, image.width, images(image)))
    seconds = time.perf_counter() - start
    output = Path(args.output or ("predictions.json" if kind == "detector" else "predictions.jsonl"))
    writer = {"classifier": _write_top_k, "detector": _write_coco, "dense": _write_dense}[kind]
    writer(output, results, args.top_k)
    stats = bm.stats
    say(f"model    {args.model} ({kind}) on {args.backend}, {len(plan)} buckets, ready in {compile_s:.1f} s")
    say(f"images   {len(files)} from {folder} in {seconds:.1f} s ({len(files) / seconds:.1f} images/s); "
        f"padding {stats.padding_waste:.1%}" + (f"; resized {stats.overflow['resize']}" if stats.overflow.get("resize") else ""))
    say(f"wrote    {output}")
    write_json(args.json, {"model": args.model, "kind": kind, "backend": args.backend, "images": len(files),
                           "seconds": seconds, "compile_seconds": compile_s, "output": str(output),
                           "stats": stats.as_dict()})
    bm.close()
    return 0


def _write_top_k(path: Path, results: list[tuple[str, int, int, dict[str, Any]]], k: int) -> None:
    with path.open("w") as f:
        for name, h, w, out in results:
            logits = np.asarray(out["logits"], dtype=np.float64).reshape(-1)
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            top = np.argsort(-probs)[:k]
            f.write(json.dumps({"file": name, "height": h, "width": w,
                                "top": [{"class": int(c), "score": float(probs[c])} for c in top]}) + "\n")


def _write_coco(path: Path, results: list[tuple[str, int, int, dict[str, Any]]], k: int) -> None:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    labels: set[int] = set()
    for image_id, (name, h, w, out) in enumerate(results, 1):
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for x1, y1, x2, y2, score, label in np.asarray(out["detections"], dtype=np.float64).reshape(-1, 6):
            labels.add(int(label))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                "area": round((x2 - x1) * (y2 - y1), 2), "score": float(score)})
    categories = [{"id": c, "name": str(c)} for c in sorted(labels)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}) + "\n")


def _write_dense(path: Path, results: list[tuple[str, int, int, dict[str, Any]]], k: int) -> None:
    with path.open("w") as f:
        for name, h, w, out in results:
            value = next(np.asarray(v) for v in out.values())
            masks = value[0] if value.ndim == 4 else value
            classes, counts = np.unique(masks.argmax(axis=0), return_counts=True)
            f.write(json.dumps({"file": name, "height": h, "width": w, "shape": list(masks.shape),
                                "classes": {str(int(c)): int(n) for c, n in zip(classes, counts)}}) + "\n")
