"""The statistics the serving benchmark tables (the README quotes them)."""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_serve_peers  # noqa: E402


def test_median_over_rounds_takes_each_cells_median_and_keeps_each_rounds_p99_in_round_order():
    results = [
        {"server": "a", "mix": "singles", "clients": 8, "round": 2, "throughput": 3.0, "p99_ms": 70.0},
        {"server": "a", "mix": "singles", "clients": 8, "round": 0, "throughput": 1.0, "p99_ms": 90.0},
        {"server": "a", "mix": "singles", "clients": 8, "round": 1, "throughput": 2.0, "p99_ms": 95.0},
        {"server": "b", "mix": "singles", "clients": 8, "round": 0, "throughput": 5.0, "p99_ms": 60.0},
    ]
    got = bench_serve_peers.median_over_rounds(results)
    assert got[("a", "singles", 8)] == {"throughput": 2.0, "p99_ms": 90.0, "p99_rounds": [90.0, 95.0, 70.0]}
    assert got[("b", "singles", 8)] == {"throughput": 5.0, "p99_ms": 60.0, "p99_rounds": [60.0]}
