"""Run the README's main command in a fresh copy of the repository, as a new user would:
no virtual environment, no build outputs, only the files git tracks. Exits non-zero, with
the output's tail, when the command fails or its report lacks throughput, padding or
bucket hits. Called by .ci/run, outside pytest (it installs a whole environment)."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from readme_command import command

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    with tempfile.TemporaryDirectory(prefix="bucketwise-fresh-") as tmp:
        dest = Path(tmp) / "bucketwise"
        for name in files:
            src = ROOT / name
            if src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(ROOT)))
        env["BUCKETWISE_CACHE"] = str(Path(tmp) / "cache")
        cmd = command("main")
        print(f"+ (fresh copy) {cmd}", flush=True)
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=dest, env=env,
                              capture_output=True, text=True, timeout=1500)
    print(proc.stdout[-3000:])
    missing = [w for w in ("texts/s", "padding", "bucket hits") if w not in proc.stdout]
    if proc.returncode != 0 or missing:
        print(proc.stderr[-3000:], file=sys.stderr)
        print(f"README main command failed (exit {proc.returncode}; missing {missing})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
