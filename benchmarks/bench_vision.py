"""Image buckets for torchvision ResNet-50 (random weights) on ONNX Runtime, batch 1.

Part 1, the seed's setup: image sizes uniform in [400, 800]^2. Expected padded pixels per
image (over 100,000 sampled sizes) and measured latency (over --synthetic sampled sizes)
for pad-to-max (800 x 800), the seed's square buckets 500/600/700/800, and 4 planned
(height, width) buckets.

Part 2, real images: the coco-tiny images (../shared/data/coco-tiny). Latency per image
for pad-to-max, the seed's buckets, 4 buckets planned from the folder, and exact shapes
(one ONNX Runtime session with free dims: no padding at all), plus how far padding moves
the logits from the exact-shape run (ResNet's global average pooling sees the padding).

Part 3, the padding shift: on the planned coco-tiny buckets, how far the logits move from
the exact-shape run with a black border, a mean-colour border, and masked pooling (which
averages only the feature cells that hold real pixels). Written to its own results file.

Images are normalised and padded bottom/right with the mean colour (parts 1 and 2). Best
of --rounds rotated rounds.

    python benchmarks/bench_vision.py [--parts 1,2,3] [--synthetic 24] [--rounds 2] [--limit 80]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, exact_session, save, table, time_rounds  # noqa: E402

from bucketwise import Bucket, BucketedModel, Plan  # noqa: E402
from bucketwise.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from bucketwise.models.vision import resnet50_classifier, seed_plan, to_array  # noqa: E402
from bucketwise.planning import Observations, plan  # noqa: E402

COCO = SHARED_DATA / "coco-tiny" / "train2017"


def with_batch(p: Plan) -> Plan:
    return Plan(tuple(Bucket({**b.as_dict(), "batch": 1}) for b in p.buckets))


def expected_pixels(p: Plan, sizes: np.ndarray) -> float:
    return float(np.mean([p.route({"height": int(h), "width": int(w)}).volume for h, w in sizes]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, default=24, help="sampled sizes timed in part 1")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit", type=int, default=80, help="coco-tiny images timed in part 2")
    parser.add_argument("--parity-images", type=int, default=20, help="coco-tiny images compared in part 3")
    parser.add_argument("--parts", default="1,2,3", help="which parts to run")
    parser.add_argument("--out", help="results JSON of parts 1-2 (default benchmarks/results/vision_resnet50_onnxruntime.json)")
    args = parser.parse_args()
    parts = {int(p) for p in args.parts.split(",")}
    if 3 in parts:
        padding_shift(args.parity_images)
    if not parts & {1, 2}:
        return

    module, spec = resnet50_classifier(pad="mean")
    backend = OnnxRuntimeBackend()
    rng = np.random.default_rng(0)

    def compiled(p: Plan) -> BucketedModel:
        return BucketedModel(module, spec, with_batch(p), backend=backend).compile(progress=False)

    # -- part 1: the seed's setup -------------------------------------------------------
    sizes = rng.integers(400, 801, (100_000, 2))
    obs = Observations.from_shapes(sizes, dims=("height", "width"))
    plans = {
        "pad-to-max (800x800)": Plan((Bucket(height=800, width=800),)),
        "seed squares 500/600/700/800": seed_plan(batch=None),
        "planned, k=4 (grid 16)": plan(obs, k=4, grid=16),
    }
    real = float(np.mean(sizes[:, 0] * sizes[:, 1]))
    timed = sizes[: args.synthetic]
    samples = [{"image": to_array(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))[None]} for h, w in timed]
    start = time.perf_counter()
    models = {name: compiled(p) for name, p in plans.items()}
    print(f"part 1: compiled {sum(len(p) for p in plans.values())} buckets in {time.perf_counter() - start:.1f} s")
    best = time_rounds({n: (lambda s, m=m: m.run(s)) for n, m in models.items()}, samples, args.rounds, desc="seed setup")
    base = best["pad-to-max (800x800)"]
    rows1, part1 = [], {}
    for name, p in plans.items():
        px = expected_pixels(p, sizes)
        ms = best[name] / len(samples) * 1e3
        part1[name] = {"buckets": [b.label() for b in p.buckets], "expected_pixels": px,
                       "padding": 1 - real / px, "ms_per_image": ms, "speedup_vs_pad_to_max": base / best[name]}
        rows1.append([name, " ".join(f"{b['height']}x{b['width']}" for b in p.buckets), f"{px / 1e3:.0f}k",
                      f"{1 - real / px:.1%}", f"{ms:.1f}", f"{base / best[name]:.2f}x"])
    print()
    print(table(rows1, ["plan", "buckets (HxW)", "pixels/image", "padding", "ms/image", "vs pad-to-max"]))

    # -- part 2: coco-tiny -------------------------------------------------------------
    from PIL import Image

    files = sorted(COCO.iterdir())[: args.limit]
    arrays = [to_array(Image.open(f).convert("RGB"))[None] for f in files]
    shapes = np.array([a.shape[2:] for a in arrays])
    coco_obs = Observations.from_images(COCO)
    max_h, max_w = (int(-(-shapes[:, i].max() // 32) * 32) for i in (0, 1))
    plans2 = {
        f"pad-to-max ({max_h}x{max_w})": Plan((Bucket(height=max_h, width=max_w),)),
        "seed squares 500/600/700/800": seed_plan(batch=None),
        "planned from the folder, k=4 (grid 32)": plan(coco_obs, k=4, grid=32),
    }
    models2 = {name: compiled(p) for name, p in plans2.items()}
    exact = exact_session(backend, module, spec, seed_plan())
    runners = {n: (lambda s, m=m: m.run(s)) for n, m in models2.items()}
    runners["exact shapes (no padding)"] = lambda s: exact.run(["logits"], s)
    samples2 = [{"image": a} for a in arrays]
    best2 = time_rounds(runners, samples2, args.rounds, desc="coco-tiny")
    # How far padding moves the logits, against the exact-shape run.
    shift = {}
    for name, m in models2.items():
        rel = []
        for s in samples2:
            ref = exact.run(["logits"], s)[0]
            rel.append(float(np.abs(m.run(s)["logits"] - ref).max() / np.abs(ref).max()))
        shift[name] = {"median_rel": float(np.median(rel)), "max_rel": float(np.max(rel))}
    base2 = best2[next(iter(plans2))]
    rows2, part2 = [], {}
    for name in runners:
        p = plans2.get(name)
        ms = best2[name] / len(samples2) * 1e3
        px = expected_pixels(p, shapes) if p else float(np.mean(shapes[:, 0] * shapes[:, 1]))
        real2 = float(np.mean(shapes[:, 0] * shapes[:, 1]))
        part2[name] = {"buckets": [b.label() for b in p.buckets] if p else None, "ms_per_image": ms,
                       "padding": 1 - real2 / px, "speedup_vs_pad_to_max": base2 / best2[name], **shift.get(name, {})}
        rows2.append([name, " ".join(f"{b['height']}x{b['width']}" for b in p.buckets) if p else "-",
                      f"{1 - real2 / px:.1%}", f"{ms:.1f}", f"{base2 / best2[name]:.2f}x",
                      f"{shift[name]['median_rel']:.2%}" if name in shift else "-"])
    print()
    print(f"coco-tiny: {len(files)} images, {shapes[:, 0].min()}-{shapes[:, 0].max()} x {shapes[:, 1].min()}-{shapes[:, 1].max()} pixels")
    print(table(rows2, ["plan", "buckets (HxW)", "padding", "ms/image", "vs pad-to-max", "logit shift (median)"]))
    path = save("vision_resnet50_onnxruntime", {"rounds": args.rounds, "seed_setup": part1, "coco_tiny": part2,
                                                "images": len(files), "synthetic_timed": len(samples)}, args.out)
    print(f"\nwrote {path}")
    backend.close()


def padding_shift(n: int) -> None:
    from PIL import Image

    files = sorted(COCO.iterdir())[:n]
    buckets = with_batch(plan(Observations.from_images(COCO), k=4, grid=32))
    rows, results = [], {}
    for name, options in (("black border (pad=zero)", {"pad": "zero"}),
                          ("mean-colour border (pad=mean)", {"pad": "mean"}),
                          ("mean border + masked pooling", {"pad": "mean", "masked": True})):
        module, spec = resnet50_classifier(**options)
        backend = OnnxRuntimeBackend()
        model = BucketedModel(module, spec, buckets, backend=backend).compile(progress=False)
        exact = exact_session(backend, module, spec, seed_plan())
        rel, top1 = [], []
        for f in files:
            a = to_array(Image.open(f).convert("RGB"), mean=spec.meta["mean"], std=spec.meta["std"])[None]
            sample = {"image": a}
            if options.get("masked"):
                sample["mask"] = np.ones((1, 1) + a.shape[2:], np.float32)
            ref = exact.run(["logits"], sample)[0]
            got = model.run(sample)["logits"]
            rel.append(float(np.abs(got - ref).max() / np.abs(ref).max()))
            top1.append(int(got.argmax() == ref.argmax()))
        results[name] = {"median_rel": float(np.median(rel)), "max_rel": float(np.max(rel)), "top1_agree": float(np.mean(top1))}
        rows.append([name, f"{np.median(rel):.2%}", f"{np.max(rel):.2%}", f"{np.mean(top1):.0%}"])
        backend.close()
    print(f"padding shift of the logits against exact shapes, {len(files)} coco-tiny images, planned buckets {buckets}")
    print(table(rows, ["padding", "median max-rel shift", "worst", "top-1 agrees"]))
    path = save("vision_padding_shift_onnxruntime", {"images": len(files), "buckets": [b.label() for b in buckets.buckets],
                                                     "results": results})
    print(f"wrote {path}\n")


if __name__ == "__main__":
    main()
