"""``bucketwise predict``: a folder of images through a bucketed image model."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ._common import (
    add_backend_options,
    add_cache_options,
    add_json_option,
    backend_options,
    cache_from_args,
    image_plan,
    printer,
    write_json,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    predict = sub.add_parser(
        "predict",
        help="run a folder of images through a bucketed image model and write its outputs",
        description=(
            "Run every image of FOLDER through --model on --backend, one compiled artifact per bucket of "
            "--plan (plan one with `bucketwise plan FOLDER`). Classifiers write top-k classes as JSONL, "
            "detectors COCO-style JSON (boxes in each image's own pixels), segmentation models one JSONL "
            "line per image with its class pixel counts."
        ),
    )
    predict.add_argument("folder", metavar="FOLDER", help="images (.jpg, .png, ...; other files are skipped)")
    predict.add_argument("--model", default="resnet50",
                         help="resnet50 (default), fasterrcnn, a torchvision model name, or path/to/file.py:function "
                              "returning (module, spec)")
    predict.add_argument("--plan", metavar="PLAN.json", help="image buckets (height x width)")
    add_backend_options(predict)
    predict.add_argument("--output", metavar="FILE", help="where to write (default predictions.jsonl, or .json for detectors)")
    predict.add_argument("--top-k", type=int, default=5, help="classes per image for classifiers (default 5)")
    predict.add_argument("--score-threshold", type=float, metavar="S",
                         help="Faster R-CNN detectors: drop boxes scoring below S (default 0.05)")
    predict.add_argument("--resize", action="store_true",
                         help="shrink images larger than every bucket to fit (else they are an error)")
    add_cache_options(predict, optional=True)
    add_json_option(predict, "the run's report")
    predict.add_argument("--no-progress", action="store_true", help="hide progress bars")
    predict.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .._optional import require
    from ..backends.base import get_backend
    from ..models.vision import ImageModel
    from ..models.zoo import load_image_model
    from ..planning.observe import image_files, unreadable_image
    from ..runtime.model import BucketedModel

    say = printer(args)
    Image = require("PIL.Image", "images", purpose="reading images")
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
