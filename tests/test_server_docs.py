"""docs/flyte-integration.md against a real server: the curl example, and every serve option."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from _server_helpers import SERVICE, ServerProcess, ident, put_req, uri_output

DOC = Path(__file__).resolve().parent.parent / "docs" / "flyte-integration.md"


def test_the_curl_example_answers_as_shown(tmp_path: Path) -> None:
    """The JSON ``curl`` call of the page, sent as written, after the entry it reads is stored
    (the page's Python examples are run on their own by tests/test_docs.py)."""
    text = DOC.read_text()
    curl_body = re.search(r"-d '(\{.*?\})'", text)
    assert curl_body is not None
    with ServerProcess(tmp_path / "cache.db", log_path=tmp_path / "log") as server:
        server.client().put(
            put_req("my-task-key", uri_output(), identifier=ident("flytesnacks", "development"))
        )
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
