"""Prometheus metrics of one server: requests, batches, bucket hits, padding, latency, lazy builds.

Every series of a model's own work carries ``model="NAME"`` (its served name). A model a
re-plan swapped out leaves its counters to its name (they only grow) and takes its state
with it: ``bucketwise_compiled_buckets`` counts the buckets of the models serving now."""

from __future__ import annotations

from typing import Any

from .._optional import require


class Metrics:
    """All series live in a registry of their own, so several apps never collide."""

    def __init__(self) -> None:
        prom = require("prometheus_client", "serve", purpose="metrics")
        self.prom = prom
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter("bucketwise_requests_total", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r)
        self.texts = prom.Counter("bucketwise_texts_total", "Texts embedded", registry=r)
        self.batches = prom.Counter("bucketwise_batches_total", "Batches run", ["model"], registry=r)
        self.traffic_write_failures = prom.Counter("bucketwise_traffic_write_failures_total",
                                                   "Writes of --traffic-file that failed", registry=r)
        self.batch_rows = prom.Histogram("bucketwise_batch_rows", "Rows per batch (before batch padding)", ["model"],
                                         buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.bucket_hits = prom.Counter("bucketwise_bucket_hits_total", "Artifact runs per bucket", ["model", "bucket"], registry=r)
        self.real_tokens = prom.Counter("bucketwise_real_tokens_total", "Positions of real input (tokens, pixels)", ["model"],
                                        registry=r)
        self.padded_tokens = prom.Counter("bucketwise_padded_tokens_total", "Positions computed (tokens, pixels), padding included",
                                          ["model"], registry=r)
        self.queue_seconds = prom.Histogram("bucketwise_queue_seconds", "Time a request waited for its batch", ["model"], registry=r,
                                            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.inference_seconds = prom.Histogram("bucketwise_inference_seconds", "Model run time per batch", ["model"], registry=r,
                                                buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.overflows = prom.Counter("bucketwise_overflows_total", "Inputs larger than every bucket, by policy",
                                      ["model", "policy"], registry=r)
        self.rejections = prom.Counter("bucketwise_rejections_total", "Requests turned away, by reason", ["reason"], registry=r)
        self.substitutions = prom.Counter(
            "bucketwise_bucket_substitutions_total",
            "Runs on a larger bucket because the wanted one was not built yet (lazy start)",
            ["model", "wanted", "used"], registry=r)
        self.compiled = prom.Gauge("bucketwise_compiled_buckets", "Buckets built and warm, of the models serving now",
                                   ["model"], registry=r)
        self.queued = prom.Gauge("bucketwise_queued_rows", "Rows waiting in the batcher", ["model"], registry=r)
        # Re-planning (serve --replan-every).
        m = ["model"]
        self.plan_generation = prom.Gauge("bucketwise_plan_generation", "Plan in service: 0 at start, +1 per swap", m, registry=r)
        self.plan_swaps = prom.Counter("bucketwise_plan_swaps_total", "Plans swapped in from live traffic", m, registry=r)
        self.replan_failures = prom.Counter("bucketwise_replan_failures_total", "Re-plans that failed (the plan stayed)", m,
                                            registry=r)
        self.planner_seconds = prom.Counter("bucketwise_planner_seconds_total", "Time spent re-planning (not building)", m,
                                            registry=r)
        self.build_seconds = prom.Gauge("bucketwise_plan_build_seconds", "Build time of the last plan swapped in", m, registry=r)
        self.build_resident = prom.Gauge(
            "bucketwise_plan_build_resident_bytes",
            "Growth of the process's resident memory over the build of the last plan swapped in", m, registry=r)
        self.build_peak_resident = prom.Gauge(
            "bucketwise_plan_build_peak_resident_bytes",
            "Peak resident memory of the process during the build of the last plan swapped in (Linux)", m, registry=r)
        self.replans_rejected = prom.Counter(
            "bucketwise_replans_rejected_total",
            "Re-plans that would have paid but were not built: over the compile or memory budget", ["model", "reason"],
            registry=r)
        self.expected_waste = prom.Gauge("bucketwise_expected_padding_waste",
                                         "Padding waste the plan in service is expected to have on the served traffic", m,
                                         registry=r)
        # Per (served name, generation): the model objects of one name, old and new, apart.
        self._compiled: dict[tuple[str, int], int] = {}
        self._seen: dict[tuple[str, int], dict[tuple[str, Any], int]] = {}  # -> (counter, key) -> last value carried

    def _carry(self, key: tuple[str, int], counter: str, item: Any, value: int) -> int:
        """The increment since the last sync of one model's counter (all of it when the
        model's stats were reset since)."""
        seen = self._seen.setdefault(key, {})
        last = seen.get((counter, item), 0)
        seen[(counter, item)] = value
        return value - last if value >= last else value

    def sync_model(self, stats: Any, name: str, generation: int = 0) -> None:
        """Carry the counters (bucket hits, padding, overflow) of the model serving ``name``
        in its ``generation`` over as increments."""
        key = (name, generation)
        for bucket, n in list(stats.hits.items()):
            delta = self._carry(key, "hits", bucket, n)
            if delta:
                self.bucket_hits.labels(model=name, bucket=bucket.label()).inc(delta)
        for policy, n in list(stats.overflow.items()):
            delta = self._carry(key, "overflow", policy, n)
            if delta:
                self.overflows.labels(model=name, policy=policy).inc(delta)
        for (wanted, used), n in list(stats.substitutions.items()):
            delta = self._carry(key, "subs", (wanted, used), n)
            if delta:
                self.substitutions.labels(model=name, wanted=wanted.label(), used=used.label()).inc(delta)
        self._compiled[key] = len(stats.compile_seconds)
        self._set_compiled(name)
        # Real and padded positions come from the one definition in BucketStats.
        delta = self._carry(key, "padded", None, stats.padded_volume)
        if delta:
            self.padded_tokens.labels(model=name).inc(delta)
        delta = self._carry(key, "real", None, stats.real_volume)
        if delta:
            self.real_tokens.labels(model=name).inc(delta)

    def forget(self, name: str, generation: int) -> None:
        """Drop what is kept of a model of ``name`` swapped out (its counters stay counted)."""
        self._compiled.pop((name, generation), None)
        self._seen.pop((name, generation), None)
        self._set_compiled(name)

    def _set_compiled(self, name: str) -> None:
        self.compiled.labels(model=name).set(sum(n for (m, _), n in self._compiled.items() if m == name))

    def render(self) -> tuple[bytes, str]:
        return self.prom.generate_latest(self.registry), self.prom.CONTENT_TYPE_LATEST
