"""What the packaging promises: a fresh environment with the package and Pillow alone
(`pip install -e . pillow`: no torch, no runtimes) plans buckets from an image folder."""

import os
import subprocess
import sys

import pytest
from conftest import COCO_IMAGES as COCO
from conftest import ROOT


@pytest.mark.slow
def test_the_package_and_pillow_alone_plan_from_an_image_folder(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", "-e", str(ROOT), "pillow"],
                             capture_output=True, text=True, env=env, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    freeze = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True, env=env).stdout.lower()
    assert "torch" not in freeze and "pillow" in freeze and "scipy" in freeze
    assert not any(line.startswith("ray==") for line in freeze.splitlines())  # the [ray] extra only: the core install does not grow
    out = tmp_path / "plan.json"
    proc = subprocess.run([str(venv / "bin" / "bucketwise"), "plan", str(COCO), "--k", "4", "--grid", "32",
                           "--output", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert out.is_file() and "planned" in proc.stdout
