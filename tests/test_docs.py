"""The Python examples in the README and docs run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", "docs/python-api.md", "docs/concepts.md", "docs/index.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _examples(page: str) -> list[str]:
    return BLOCK.findall((ROOT / page).read_text())


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page: str, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    # Blocks on one page build on each other, like a reader following along.
    for number, source in enumerate(_examples(page), 1):
        code = compile(source, f"{page}[python block {number}]", "exec")
        exec(code, namespace)
