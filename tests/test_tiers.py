"""The pure tests need NumPy only: run them with torch, Pillow, fastapi and the runtimes
made unimportable, and require that none of them skips."""

import subprocess
import sys

import pytest
from conftest import ROOT

PURE = ["test_shapes.py", "test_router.py", "test_spec.py", "test_runtime.py", "test_batcher.py",
        "test_vision_geometry.py"]

BLOCK = """
import sys
for m in ("PIL", "torch", "torchvision", "fastapi", "prometheus_client", "transformers", "onnxruntime", "openvino"):
    sys.modules[m] = None
import pytest
sys.exit(pytest.main(["-q", "-rs", "-p", "no:cacheprovider", *sys.argv[1:]]))
"""


@pytest.mark.slow
def test_pure_tests_pass_without_torch_pillow_fastapi_or_runtimes():
    proc = subprocess.run([sys.executable, "-c", BLOCK, *PURE], cwd=ROOT / "tests", capture_output=True,
                          text=True, timeout=600)
    tail = proc.stdout[-2000:]
    assert proc.returncode == 0, tail + proc.stderr[-2000:]
    assert "skipped" not in tail and " passed" in tail, tail
