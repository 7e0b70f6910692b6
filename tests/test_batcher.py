"""The batcher (asyncio) with a NumPy test double. Pure: no torch, no server."""

import asyncio

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bucketwise import Bucket, BucketedModel, InputSpec, ModelSpec, OutputSpec, Plan, QueueFullError, Router
from bucketwise.runtime.batcher import Batcher

SPEC = ModelSpec(
    inputs=(InputSpec("input_ids", ("batch", "seq"), "int64", pad_value=0),
            InputSpec("attention_mask", ("batch", "seq"), "int64", pad_value=0, example=1)),
    outputs=(OutputSpec("per_token", ("batch", "seq")), OutputSpec("total", ("batch",))),
)


class Recorder:
    def __init__(self):
        self.shapes = []

    def __call__(self, input_ids, attention_mask):
        self.shapes.append(input_ids.shape)
        return {"per_token": input_ids * attention_mask, "total": (input_ids * attention_mask).sum(axis=1)}


def compiled(plan=None):
    rec = Recorder()
    bm = BucketedModel(rec, SPEC, plan or Plan.grid(batch=[1, 4, 8], seq=[8, 16, 32]), warmup_runs=0).compile(progress=False)
    rec.shapes.clear()
    return bm, rec


def row(n, seed):
    ids = np.random.default_rng(seed).integers(1, 100, n)
    return {"input_ids": ids, "attention_mask": np.ones(n, np.int64)}


def test_many_concurrent_callers_get_their_own_results():
    bm, rec = compiled()

    async def main():
        b = Batcher(bm, max_delay=0.002)
        rows = [row(1 + i % 32, i) for i in range(300)]

        async def call(i):
            await asyncio.sleep((i % 7) * 0.0005)
            return await b.submit(rows[i])

        outs = await asyncio.gather(*(call(i) for i in range(300)))
        await b.close()
        return rows, outs

    rows, outs = asyncio.run(main())
    assert len(outs) == 300
    for r, o in zip(rows, outs):
        assert o["total"] == r["input_ids"].sum()
        np.testing.assert_array_equal(o["per_token"], r["input_ids"])
    assert len(rec.shapes) < 300  # requests really were batched
    assert max(s[0] for s in rec.shapes) == 8


def test_short_requests_ride_in_free_pad_rows_of_a_longer_batch():
    bm, rec = compiled(Plan.grid(batch=[1, 4], seq=[8, 32]))

    async def main():
        b = Batcher(bm, max_delay=0.05)
        long_rows = [row(20, i) for i in range(3)]
        short = row(3, 99)
        outs = await asyncio.gather(*(b.submit(r) for r in long_rows), b.submit(short))
        await b.close()
        return outs, short

    outs, short = asyncio.run(main())
    assert rec.shapes == [(4, 32)]  # one run: 3 long rows + the short one in the pad row
    assert outs[3]["total"] == short["input_ids"].sum() and outs[3]["per_token"].shape == (3,)


def test_a_full_queue_is_refused_and_close_drains_what_was_accepted():
    bm, rec = compiled()

    async def main():
        b = Batcher(bm, max_delay=10.0, max_queue=2)
        first = [asyncio.ensure_future(b.submit(row(4, i))) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match="limit 2"):
            b.admit(1)
        with pytest.raises(QueueFullError, match="limit 2"):
            await b.submit(row(4, 9))
        await b.close()  # flushes at once, though max_delay has not passed
        return await asyncio.gather(*first)

    outs = asyncio.run(main())
    assert len(outs) == 2 and rec.shapes == [(4, 8)]


def test_model_errors_reach_every_caller_of_the_batch():
    def broken(input_ids, attention_mask):
        raise RuntimeError("boom")

    bm = BucketedModel(broken, SPEC, Plan.grid(batch=[4], seq=[8]), warmup_runs=0).compile(progress=False)

    async def main():
        b = Batcher(bm, max_delay=0.001)
        results = await asyncio.gather(*(b.submit(row(3, i)) for i in range(3)), return_exceptions=True)
        await b.close()
        return results

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(main()))


def test_a_busy_short_bucket_does_not_starve_a_long_one():
    bm, rec = compiled(Plan.grid(batch=[1, 2], seq=[8, 32]))

    async def main():
        b = Batcher(bm, max_delay=0.0)
        long_one = asyncio.ensure_future(b.submit(row(20, 0)))
        await asyncio.sleep(0)
        shorts = [asyncio.ensure_future(b.submit(row(3, i))) for i in range(1, 9)]  # 4 full batches
        await asyncio.gather(long_one, *shorts)
        await b.close()

    asyncio.run(main())
    assert rec.shapes[0] == (1, 32)  # the long request came first: it waited longest




def drain(bm, rows):
    """Queue every row at once, then close: each queue flushes as the batcher decides."""

    async def main():
        b = Batcher(bm, max_delay=60.0, max_queue=10_000)
        tasks = [asyncio.ensure_future(b.submit(r)) for r in rows]
        await asyncio.sleep(0)
        await b.close()
        return await asyncio.gather(*tasks)

    return asyncio.run(main())


def runs_flushing_each_queue_alone(plan, lengths):
    """Runs needed when every length queue is flushed on its own, with no ride-along."""
    router = Router(plan)
    edges = router.queue_edges("seq")
    per_edge = {}
    for n in lengths:
        edge = min(e for e in edges if e >= n)
        per_edge[edge] = per_edge.get(edge, 0) + 1
    return sum(-(-n // router.max_rows({"batch": 1, "seq": e})) for e, n in per_edge.items())


def test_batch_sizes_come_from_the_buckets_that_exist():
    # Batch sizes picked per dim ([2, 8]) would pad 3 long rows + 5 riders to 8 rows at
    # length 20, which only the (2, 32) bucket holds: 4 runs. The router picks among the
    # buckets that exist: 3 runs, as flushing each queue alone.
    plan = Plan((Bucket(batch=8, seq=8), Bucket(batch=2, seq=32)))
    bm, rec = compiled(plan)
    rows = [row(20, i) for i in range(3)] + [row(4, 10 + i) for i in range(5)]
    outs = drain(bm, rows)
    assert bm.stats.runs == 3 == runs_flushing_each_queue_alone(plan, [20] * 3 + [4] * 5)
    assert sorted(rec.shapes) == [(2, 32), (2, 32), (8, 8)]
    for r, o in zip(rows, outs):
        np.testing.assert_array_equal(o["per_token"], r["input_ids"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 8), st.integers(1, 48)), min_size=1, max_size=5, unique=True),
    st.lists(st.integers(1, 48), min_size=1, max_size=40),
)
def test_batcher_never_uses_more_runs_than_flushing_each_queue_alone(sizes, lengths):
    plan = Plan(tuple(Bucket(batch=b, seq=s) for b, s in sizes))
    limit = plan.max_size("seq")
    lengths = [min(n, limit) for n in lengths]
    bm, _ = compiled(plan)
    rows = [row(n, i) for i, n in enumerate(lengths)]
    outs = drain(bm, rows)
    assert bm.stats.runs <= runs_flushing_each_queue_alone(plan, lengths)
    for r, o in zip(rows, outs):  # and every caller got its own row back, cropped
        np.testing.assert_array_equal(o["per_token"], r["input_ids"])
    assert bm.stats.real_volume == sum(lengths)  # padding waste counts each row's own tokens


def test_a_request_is_queued_whole_or_not_at_all():
    bm, rec = compiled()

    async def main():
        b = Batcher(bm, max_delay=10.0, max_queue=5)
        first = asyncio.ensure_future(b.submit_many([row(4, i) for i in range(3)]))
        await asyncio.sleep(0)
        assert b.queued == 3
        with pytest.raises(QueueFullError):
            await b.submit_many([row(4, 10 + i) for i in range(3)])  # 3 more do not fit: none queued
        assert b.queued == 3
        await b.close()
        return await first

    outs = asyncio.run(main())
    assert len(outs) == 3 and sum(s[0] for s in rec.shapes) >= 3


IMAGE_SPEC = ModelSpec(
    inputs=(InputSpec("image", ("batch", 3, "height", "width"), "float32"),),
    outputs=(OutputSpec("mean", ("batch", None)), OutputSpec("map", ("batch", None, "height", "width"))),
)


class ImageRecorder:
    def __init__(self):
        self.shapes = []

    def __call__(self, image):
        self.shapes.append(image.shape)
        return {"mean": image.sum(axis=(2, 3)), "map": image * 2}


def test_images_batch_over_height_and_width_queues():
    rec = ImageRecorder()
    plan = Plan.grid(batch=[1, 4], height=[16, 32], width=[16, 32])
    bm = BucketedModel(rec, IMAGE_SPEC, plan, warmup_runs=0).compile(progress=False)
    rec.shapes.clear()
    rng = np.random.default_rng(0)
    sizes = [(10, 12), (30, 9), (16, 16), (7, 31), (20, 28), (3, 3), (32, 32), (15, 17)] * 3
    images = [rng.random((3, h, w), dtype=np.float32) for h, w in sizes]

    async def main():
        b = Batcher(bm, max_delay=0.01)
        outs = await asyncio.gather(*(b.submit(im) for im in [{"image": i} for i in images]))
        await b.close()
        return outs

    outs = asyncio.run(main())
    for im, out in zip(images, outs):  # each caller gets its own image's outputs, cropped
        np.testing.assert_allclose(out["mean"], im.sum(axis=(1, 2)), rtol=1e-5)
        np.testing.assert_array_equal(out["map"], im * 2)
    assert all(s[2] in (16, 32) and s[3] in (16, 32) for s in rec.shapes)
    assert len(rec.shapes) < len(images)  # batched: fewer runs than images
    assert bm.stats.real_volume == sum(h * w for h, w in sizes)


def test_rows_of_callers_that_gave_up_are_not_computed():
    bm, rec = compiled()

    async def main():
        b = Batcher(bm, max_delay=0.05)
        gone = asyncio.ensure_future(b.submit_many([row(20, i) for i in range(3)]))
        kept = asyncio.ensure_future(b.submit(row(5, 99)))
        await asyncio.sleep(0)
        assert b.queued == 4
        gone.cancel()  # the client went away before its batch ran
        out = await kept
        await b.close()
        return out

    out = asyncio.run(main())
    assert out["total"] == row(5, 99)["input_ids"].sum()
    assert sum(s[0] for s in rec.shapes) <= 1 and bm.stats.real_volume == 5  # only the live row ran


def test_drain_fails_rows_not_started_by_the_deadline_with_a_retryable_error():
    bm, rec = compiled()

    async def main():
        b = Batcher(bm, max_delay=0.0)
        started = asyncio.Event()
        release = asyncio.Event()
        loop = asyncio.get_running_loop()
        real_run = bm.run_rows

        def slow_run(*args):  # the first batch holds the worker until the test releases it
            loop.call_soon_threadsafe(started.set)
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
            return real_run(*args)

        bm.run_rows = slow_run
        first = asyncio.ensure_future(b.submit(row(30, 0)))
        await started.wait()
        waiting = [asyncio.ensure_future(b.submit(row(30, i))) for i in range(1, 4)]
        await asyncio.sleep(0)
        b.drain(0.05)
        with pytest.raises(QueueFullError, match="shutting down"):
            await b.submit(row(3, 7))  # no new rows once draining
        await asyncio.sleep(0.1)  # the deadline passes while the first batch still runs
        release.set()
        await b.close()
        return await first, await asyncio.gather(*waiting, return_exceptions=True)

    first, waiting = asyncio.run(main())
    assert first["total"] == row(30, 0)["input_ids"].sum()  # the started batch finished
    assert all(isinstance(w, QueueFullError) and "drain deadline" in str(w) for w in waiting)
    assert bm.stats.real_volume == 30  # the expired rows were never computed


def test_adaptive_wait_runs_a_lone_request_at_once_and_waits_only_inside_a_burst():
    bm, rec = compiled()

    async def main():
        fixed = Batcher(bm, max_delay=0.5)
        adaptive = Batcher(bm, max_delay=0.5, adaptive=True)
        loop = asyncio.get_running_loop()
        took = {}
        for name, b in (("fixed", fixed), ("adaptive", adaptive)):
            start = loop.time()
            for i in range(3):  # a lone client: each request after the previous answer
                await b.submit(row(5, i))
            took[name] = loop.time() - start
        # Requests 0.1 ms apart while a run takes 5 ms: waiting fills the batch.
        adaptive._gap, adaptive._run = 1e-4, 5e-3
        hold_in_burst = adaptive._hold()
        adaptive._gap = 3e-3  # 3 ms apart: more than a quarter of a run, so no wait
        hold_sparse = adaptive._hold()
        for b in (fixed, adaptive):
            await b.close()
        return took, hold_in_burst, hold_sparse

    took, hold_in_burst, hold_sparse = asyncio.run(main())
    assert took["fixed"] >= 1.5  # 3 x 0.5 s of waiting for company that never came
    assert took["adaptive"] < 0.5  # no wait at all
    assert hold_in_burst == pytest.approx(2e-4) and hold_sparse == 0.0
    assert all(s[0] == 1 for s in rec.shapes)


def test_two_streams_run_batches_at_once_and_every_caller_gets_its_rows():
    import threading
    import time

    class Slow(Recorder):
        def __init__(self):
            super().__init__()
            self.lock, self.now, self.most = threading.Lock(), 0, 0

        def __call__(self, input_ids, attention_mask):
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
            time.sleep(0.05)
            with self.lock:
                self.now -= 1
            return super().__call__(input_ids, attention_mask)

    rec = Slow()
    bm = BucketedModel(rec, SPEC, Plan.grid(batch=[1, 2], seq=[8, 32]), warmup_runs=0).compile(progress=False)

    async def main(streams):
        b = Batcher(bm, max_delay=0.0, streams=streams)
        rows = [row(4 if i % 2 else 20, i) for i in range(8)]
        start = asyncio.get_running_loop().time()
        outs = await asyncio.gather(*(b.submit(r) for r in rows))
        took = asyncio.get_running_loop().time() - start
        await b.close()
        return rows, outs, took

    rows, outs, two = asyncio.run(main(2))
    for r, o in zip(rows, outs):
        assert o["total"] == r["input_ids"].sum()
    assert rec.most == 2
    rec.most = 0
    _, _, one = asyncio.run(main(1))
    assert rec.most == 1 and two < one


class Overlap(Recorder):
    """Records, for each run, its rows, its thread and how many runs were under way."""

    def __init__(self, seconds):
        super().__init__()
        import threading

        self.seconds, self.lock, self.now, self.runs = seconds, threading.Lock(), 0, []

    def __call__(self, input_ids, attention_mask):
        import threading
        import time

        with self.lock:
            self.now += 1
            self.runs.append((int((attention_mask.sum(axis=1) > 0).sum()), threading.current_thread().name, self.now))
        time.sleep(self.seconds)
        with self.lock:
            self.now -= 1
        return super().__call__(input_ids, attention_mask)


def test_batches_run_one_at_a_time_always_run_on_the_first_stream():
    # A shared pool hands work to its threads in turn; one thread per stream keeps batches
    # that run one at a time on one thread.
    rec = Overlap(0.0)
    bm = BucketedModel(rec, SPEC, Plan.grid(batch=[1, 4], seq=[8, 32]), warmup_runs=0).compile(progress=False)
    rec.runs.clear()

    async def main():
        b = Batcher(bm, max_delay=0.0, streams=2, adaptive=True)
        await asyncio.gather(*(b.submit(row(4, i)) for i in range(8)))  # both streams busy
        for i in range(20):
            await b.submit(row(4 + i % 20, i))  # one at a time
        await b.close()

    asyncio.run(main())
    assert {name for _, name, _ in rec.runs[-20:]} == {"bucketwise-infer-0_0"}


def test_a_second_batch_runs_beside_a_small_one_but_not_beside_a_large_one():
    rec = Overlap(0.15)
    bm = BucketedModel(rec, SPEC, Plan.grid(batch=[1, 4], seq=[8, 32]), warmup_runs=0).compile(progress=False)

    async def main(first_rows):
        rec.runs.clear()
        b = Batcher(bm, max_delay=0.0, streams=2, overlap_rows=2)
        first = [asyncio.ensure_future(b.submit(row(4, i))) for i in range(first_rows)]
        await asyncio.sleep(0.05)  # the first batch is running
        await b.submit(row(20, 99))
        await asyncio.gather(*first)
        await b.close()
        return [(rows, most) for rows, _, most in rec.runs]

    # 1 row running (at most overlap_rows): the next batch starts beside it.
    assert asyncio.run(main(1)) == [(1, 1), (1, 2)]
    # 4 rows running: the next batch waits for it to end.
    assert asyncio.run(main(4)) == [(4, 1), (1, 1)]
