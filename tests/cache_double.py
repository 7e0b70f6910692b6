"""A cacheable test double: a "compiler" that takes ``delay`` seconds, logs every compile
and load to a file (so tests can count them across processes), and can hold ``hold_mib``
of memory per artifact (so memory accounting has something real to measure).

The model is a scale factor; an artifact computes ``y = scale * x`` at its bucket's shape.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bucketwise import InputSpec, ModelSpec, OutputSpec
from bucketwise.runtime.cache import LazyModel

SPEC = ModelSpec(inputs=(InputSpec("x", ("batch", "seq"), "float32"),), outputs=(OutputSpec("y", ("batch", "seq")),))


def scale_model(scale: float = 2.0) -> LazyModel:
    return LazyModel(load=lambda: float(scale), fingerprint=f"scale-{scale}", name=f"scale-{scale}")


@dataclass
class ScaleArtifact:
    bucket: Any
    scale: float
    ballast: Any = None
    array_kind: str = "numpy"

    def run(self, inputs):
        return {"y": inputs["x"] * self.scale}


class SlowScaleBackend:
    name: ClassVar[str] = "slow-scale"
    export_format: ClassVar[str | None] = None
    parallel_compile: ClassVar[bool] = True

    def export_key(self):
        return {}

    def export(self, model, spec, example, folder):
        return model

    def __init__(self, *, delay: float = 0.0, log: str | None = None, hold_mib: int = 0, version: str = "1"):
        self.delay, self.log, self.hold_mib, self.version = delay, log, hold_mib, version

    def _note(self, what: str, bucket: Any) -> None:
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()} {what} {bucket.label()}\n")

    def _ballast(self):
        # Written, so the pages are resident, not just reserved.
        return np.ones(self.hold_mib << 18, np.float32) if self.hold_mib else None

    def compile(self, model, spec, bucket):
        time.sleep(self.delay)
        self._note("compile", bucket)
        return ScaleArtifact(bucket, float(model), self._ballast())

    def close(self):
        pass

    def cache_key(self):
        return {"name": self.name, "version": self.version, "options": {}}

    def compile_to(self, model, spec, bucket, folder: Path):
        artifact = self.compile(model, spec, bucket)
        np.save(folder / "scale.npy", np.array([artifact.scale]))
        return artifact

    def load(self, folder: Path, spec, bucket):
        self._note("load", bucket)
        return ScaleArtifact(bucket, float(np.load(folder / "scale.npy")[0]), self._ballast())


def events(log: Path) -> list[tuple[str, str]]:
    if not log.exists():
        return []
    return [tuple(line.split()[1:]) for line in log.read_text().splitlines()]


class SharedWeightsBackend(SlowScaleBackend):
    """Like :class:`SlowScaleBackend`, and every entry also holds the same ``shared_mib``
    "weights" file, which loads into memory once per process however many buckets load it
    (as ONNX Runtime maps one weights file for every session); ``shared_files`` says so."""

    name: ClassVar[str] = "shared-weights"
    _resident: ClassVar[dict[str, Any]] = {}  # weights file content -> the one copy in memory

    def __init__(self, *, shared_mib: int = 0, **options: Any) -> None:
        super().__init__(**options)
        self.shared_mib = shared_mib

    def compile_to(self, model, spec, bucket, folder: Path):
        super().compile_to(model, spec, bucket, folder)
        np.full(self.shared_mib << 18, 3.0, np.float32).tofile(folder / "weights.bin")
        return self.load(folder, spec, bucket)

    def load(self, folder: Path, spec, bucket):
        artifact = super().load(folder, spec, bucket)
        key = f"{self.shared_mib}"
        if key not in self._resident:
            self._resident[key] = np.fromfile(folder / "weights.bin", np.float32) + 0  # read, written: resident
        artifact.ballast = (artifact.ballast, self._resident[key])
        return artifact

    def shared_files(self, folder: Path) -> list[str]:
        return ["weights.bin"]


class OverlapBackend(SlowScaleBackend):
    """Like :class:`SlowScaleBackend`, and each artifact's run takes ``run_delay`` seconds and
    is counted while it runs: ``most`` is the most runs seen in progress at once. It stands in
    for a runtime whose concurrent first runs must not meet (OpenVINO's warm-ups, which once
    hung in ``InferRequest.infer`` when two parallel cache loads warmed up together)."""

    name: ClassVar[str] = "overlap-scale"

    def __init__(self, *, run_delay: float = 0.1, **options: Any) -> None:
        super().__init__(**options)
        self.run_delay = run_delay
        self.running = self.most = 0
        self._count = threading.Lock()

    def _watched(self, artifact: ScaleArtifact) -> ScaleArtifact:
        inner = artifact.run

        def run(inputs):
            with self._count:
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                time.sleep(self.run_delay)
                return inner(inputs)
            finally:
                with self._count:
                    self.running -= 1

        artifact.run = run  # type: ignore[method-assign]
        return artifact

    def compile(self, model, spec, bucket):
        return self._watched(super().compile(model, spec, bucket))

    def load(self, folder: Path, spec, bucket):
        return self._watched(super().load(folder, spec, bucket))
