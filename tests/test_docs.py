"""The README and the docs site: every code block runs or says why not, the site builds
strictly, and the benchmark pages are those the results files give."""

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT

PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARKER = re.compile(r"<!-- (example|command|not-run): ?(.*?) -->")

# Examples a test of their own runs (and checks the output of); the runner below runs the rest.
RUN_ELSEWHERE = {
    "README.md": ("quickstart", "tests/test_readme.py"),
    "docs/backends.md": ("jax", "tests/test_readme.py"),
    "docs/text-tasks.md": (None, "tests/test_heads.py"),  # every example, in order: test_the_docs_examples_run
}
# Pages whose examples compile a real model (tens of seconds each).
SLOW_PAGES = {"docs/getting-started.md", "docs/embeddings.md"}


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    kind: str | None  # example, command, not-run, or None when unmarked
    value: str


def blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").split("\n")
    found, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not fence:
            i += 1
            continue
        start, lang, closer = i, fence.group(3), fence.group(2)
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(closer):
            j += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        mark = MARKER.fullmatch(prev.strip())
        found.append(Block(str(path.relative_to(ROOT)), start + 1, lang, "\n".join(lines[start + 1:j]) + "\n",
                           mark.group(1) if mark else None, mark.group(2).strip() if mark else ""))
        i = j + 1
    return found


ALL = [b for page in PAGES for b in blocks(page)]


def test_every_code_block_is_run_or_says_why_not():
    unmarked = [f"{b.page}:{b.line}" for b in ALL if b.kind is None]
    assert not unmarked, ("code blocks with neither <!-- example: NAME --> (run by a test) nor "
                          f"<!-- not-run: REASON --> before them: {unmarked}")
    vague = [f"{b.page}:{b.line}" for b in ALL if b.kind == "not-run" and len(b.value) < 15]
    assert not vague, f"not-run blocks must say why (and, where a test covers it, which): {vague}"
    for page in {b.page for b in ALL}:
        names = [b.value for b in ALL if b.page == page and b.kind == "example"]
        assert len(names) == len(set(names)), f"{page}: example names repeat: {names}"
    commands = [b.value for b in ALL if b.kind == "command"]
    assert sorted(commands) == ["main", "test"] and all(b.page == "README.md" for b in ALL if b.kind == "command")


def test_the_examples_run_elsewhere_are_read_by_their_tests():
    for page, (name, test) in RUN_ELSEWHERE.items():
        examples = [b.value for b in ALL if b.page == page and b.kind == "example"]
        assert examples and (name is None or name in examples), (page, name, examples)
        source = (ROOT / test).read_text()
        assert Path(page).name in source or page == "README.md", f"{test} does not read {page}"
        if name:
            assert f"example: {name}" in source, f"{test} does not run {page}'s {name} example"


def run_here(page: str) -> list[Block]:
    name = RUN_ELSEWHERE.get(page, ("-", ""))[0]
    if page in RUN_ELSEWHERE and name is None:
        return []
    return [b for b in ALL if b.page == page and b.kind == "example" and b.value != name]


RUN_PAGES = sorted({b.page for b in ALL if b.kind == "example" and run_here(b.page)})


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_PAGES else p for p in RUN_PAGES])
def test_the_pages_examples_run(page, tmp_path):
    """A page's Python examples run in order in one process (later ones use earlier names),
    then its shell examples, in a fresh folder, with this environment's `bucketwise`."""
    todo = run_here(page)
    unknown = [f"{b.page}:{b.line} ({b.lang})" for b in todo if b.lang not in ("python", "bash")]
    assert not unknown, f"examples in a language the runner does not run: {unknown}"
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    python = "\n".join(b.code for b in todo if b.lang == "python")
    out = ""
    if python:
        proc = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{page}'s Python examples failed:\n{proc.stderr[-3000:]}"
        out += proc.stdout
    for b in (b for b in todo if b.lang == "bash"):
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", b.code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{page}:{b.line} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        out += proc.stdout
    # What the pages say the examples print.
    for comment in re.findall(r"# (\([\d, ]+\))", "\n".join(b.code for b in todo)):
        assert comment in out, f"{page}: an example says it prints {comment}; it printed:\n{out[-2000:]}"


def test_the_cli_options_the_docs_name_exist():
    from bucketwise.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    helptext = parser.format_help() + "".join(c.format_help() for c in commands.values())
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for flag in set(re.findall(r"`(--[a-z-]+)", text)):
            assert flag in helptext, f"{page.relative_to(ROOT)} mentions {flag}, which no bucketwise command has"
        for name in re.findall(r"`bucketwise ([a-z]+)", text):
            assert name in commands, f"{page.relative_to(ROOT)} mentions `bucketwise {name}`, which does not exist"


def test_the_benchmark_pages_are_what_the_results_files_give(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_pages.py"), "--out", str(tmp_path), "--no-plots"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for page in ("benchmarks/README.md", "docs/benchmarks.md"):
        assert (tmp_path / page).read_text() == (ROOT / page).read_text(), (
            f"{page} is older than benchmarks/results/*.json: run python benchmarks/make_pages.py")
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\((img/benchmarks/[^)]+\.svg)\)", text)
    assert images and all((ROOT / "docs" / p).is_file() for p in images)
    results = {p.name for p in (ROOT / "benchmarks" / "results").glob("*.json")}
    assert {Path(p).stem + ".json" for p in images} <= results
    assert all(name in text for name in results), f"results files the page does not show: {[n for n in results if n not in text]}"


def test_the_docs_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs tools are in the test extra (bucketwise[docs]); .ci/run installs them")
    pytest.importorskip("mkdocstrings", reason="the docs tools are in the test extra (bucketwise[docs]); .ci/run installs them")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert all(p in nav for p in pages), f"pages not in the navigation: {[p for p in pages if p not in nav]}"
