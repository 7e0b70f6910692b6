"""Print one of the README's commands: `main` (set up and run the main job) or `test`.

The README holds each in a ```bash block right after a `<!-- command: NAME -->` marker.
.ci/run and tests/test_readme.py both read the commands through this script, so the
README, CI and the tests cannot drift apart.
"""

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def command(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- command: {re.escape(name)} -->\s*```bash\n(.*?)```", text, re.S)
    if not match:
        raise SystemExit(f"README.md has no '<!-- command: {name} -->' block")
    return match.group(1).strip()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python .ci/readme_command.py main|test")
    print(command(sys.argv[1]))
