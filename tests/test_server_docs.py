"""The examples in docs/flyte-integration.md run against a real server."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from _server_helpers import SERVICE, ServerProcess

DOC = Path(__file__).resolve().parent.parent / "docs" / "flyte-integration.md"


def test_doc_examples_run(tmp_path: Path) -> None:
    text = DOC.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    curl_body = re.search(r"-d '(\{.*?\})'", text)
    assert curl_body is not None
    with ServerProcess(tmp_path / "cache.db", log_path=tmp_path / "log") as server:
        namespace: dict[str, object] = {"url": server.url}
        for block in blocks:
            exec(compile(block, str(DOC), "exec"), namespace)
        response = httpx.post(
            f"{server.url}{SERVICE}/Get",
            content=curl_body.group(1),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 200
    assert response.json()["output"]["outputUri"] == "s3://bucket/outputs.pb"


def test_every_serve_option_is_documented() -> None:
    from typer.testing import CliRunner

    from flytecache.cli import app

    text = DOC.read_text()
    help_text = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output
    for option in re.findall(r"--[a-z][a-z-]+", help_text):
        if option != "--help":
            assert f"`{option}`" in text, option
