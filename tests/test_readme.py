"""README.md's Python examples run as written (issue 25): every ```python block, each in a fresh
namespace, on the CPU. Shell blocks are not run. The examples use tiny sizes, so the whole file takes
seconds; the README's length is kept near a page and its links point to files that exist."""

from __future__ import annotations

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
FENCE = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of each ```python block of ``text``."""
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in FENCE.finditer(text)]


with open(README, encoding="utf-8") as f:
    TEXT = f.read()
BLOCKS = python_blocks(TEXT)


def test_the_readme_has_its_examples_and_stays_short():
    assert len(BLOCKS) >= 4, "README.md lost its Python examples"
    assert TEXT.count("\n") <= 210, "README.md should stay about 200 lines; long passages belong in docs/"
    assert "make demo" in TEXT.split("\n## ")[0] and "make test" in TEXT.split("\n## ")[0]


def test_the_readme_links_to_files_that_exist():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", TEXT)
    local = [link for link in links if "://" not in link]
    assert local, "README.md links to no page of docs/"
    missing = [link for link in local if not os.path.exists(os.path.join(os.path.dirname(README), link))]
    assert not missing, f"README.md links to missing files: {missing}"


@pytest.mark.parametrize("line,code", BLOCKS, ids=[f"line{n}" for n, _ in BLOCKS])
def test_readme_python_block_runs(line, code, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # anything an example writes lands here
    namespace = {"__name__": "__readme__"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)
