from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
# Six COCO photographs (500 x 346 to 640 x 489, and 427 x 640 upright), shipped with
# the tests: see tests/data/coco/ATTRIBUTION.md for their licenses.
COCO_IMAGES = DATA / "coco" / "images"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session", autouse=True)
def _private_artifact_cache(tmp_path_factory):
    """Commands under test use the artifact cache by default; keep it out of ~/.cache."""
    import os

    old = os.environ.get("BUCKETWISE_CACHE")
    os.environ["BUCKETWISE_CACHE"] = str(tmp_path_factory.mktemp("bucketwise-cache"))
    yield
    if old is None:
        os.environ.pop("BUCKETWISE_CACHE", None)
    else:
        os.environ["BUCKETWISE_CACHE"] = old
