"""Regenerate docs/img/web-*.png: the web view's pages on a small, realistic cache.

Builds a database with a month of entries from a few tasks (inline outputs of several shapes
and outputs by URI) and a few leases, serves it with a token, signs in with headless Chromium
(the one the tests use) and saves one screenshot per page.

    make screenshots        # or: .venv/bin/python -m scripts.web_view_screenshots [DIR]
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "docs-example-token"
TASKS = {
    "flytesnacks": ["workflows.etl.load_table", "workflows.etl.clean", "workflows.ml.train_model"],
    "genomics": ["pipelines.align.bwa_mem", "pipelines.qc.fastqc"],
}


def _seed(db: Path) -> str:
    """A month of entries and four leases; returns the key of an entry worth showing."""
    from flyteidl2.cacheservice import cacheservice_pb2 as cs
    from flyteidl2.core import identifier_pb2, literals_pb2

    from flytecache import CacheStore
    from flytecache.config import StoreSettings

    rng = random.Random(7)
    now = datetime.now(UTC)
    when = [now]
    shown = ""
    settings = StoreSettings(max_heartbeat=timedelta(minutes=5))
    with CacheStore.open(db, clock=lambda: when[0], settings=settings) as store:
        for i in range(400):
            project = rng.choice(list(TASKS))
            domain = rng.choice(["development", "development", "production"])
            task = rng.choice(TASKS[project])
            when[0] = now - timedelta(days=29 * (1 - (i / 400) ** 0.5), minutes=rng.random() * 600)
            out = cs.CachedOutput()
            if i % 4:
                lits = out.output_literals.literals
                lits["rows"].scalar.primitive.integer = rng.randrange(10**6)
                lits["score"].scalar.primitive.float_value = round(rng.random(), 4)
                lits["report"].scalar.blob.uri = f"s3://my-bucket/{project}/{i}/report.html"
                lits["table"].scalar.structured_dataset.uri = f"s3://my-bucket/{project}/{i}/df"
                lits[
                    "table"
                ].scalar.structured_dataset.metadata.structured_dataset_type.format = "parquet"
                for name in ("train", "test"):
                    item = literals_pb2.Literal()
                    item.scalar.primitive.string_value = f"{name}-{i}.csv"
                    lits["splits"].collection.literals.append(item)
                lits["params"].map.literals["lr"].scalar.primitive.float_value = 0.001
                lits["params"].map.literals["epochs"].scalar.primitive.integer = 20
            else:
                out.output_uri = f"s3://my-bucket/metadata/{project}/{i:05d}/outputs.pb"
            out.metadata.source_identifier.CopyFrom(
                identifier_pb2.Identifier(
                    resource_type=identifier_pb2.TASK,
                    project=project,
                    domain=domain,
                    name=task,
                    version=f"v{1 + i // 150}",
                )
            )
            out.metadata.key_map.values.update(
                {
                    "task-version": f"v{1 + i // 150}",
                    "execution-name": f"a{rng.getrandbits(40):x}",
                    "exec-project": project,
                    "exec-domain": domain,
                    "exec-node": f"n{rng.randrange(4)}",
                    "exec-attempt": "0",
                }
            )
            digest = f"{rng.getrandbits(128):032x}"
            key = f"{project}-{domain}-{digest[:22]}-GKw-c0Pw-{digest[10:20]}-{digest[5:30]}-1.0"
            store.put(key, out)
            if i % 4 and task.endswith("train_model"):
                shown = key
        when[0] = now
        for n, owner in enumerate(["a3f9c2d41-n0-0", "a77b1e0c5-n2-0", "a91d0e6f2-n1-1"]):
            store.get_or_extend_reservation(
                f"flytesnacks-development-{rng.getrandbits(160):040x}",
                owner,
                timedelta(seconds=40 * (n + 1)),
            )
        when[0] = now - timedelta(minutes=5)
        store.get_or_extend_reservation(
            f"genomics-production-{rng.getrandbits(160):040x}",
            "a0c4f7aa1-n3-0",
            timedelta(seconds=10),
        )
    return shown


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    from tests import _browser

    target = Path((argv or sys.argv[1:] or [str(ROOT / "docs" / "img")])[0])
    if _browser.missing():
        raise SystemExit(_browser.missing())
    with tempfile.TemporaryDirectory(prefix="flytecache-shots-") as tmp:
        db = Path(tmp) / "cache.db"
        shown = _seed(db)
        token = Path(tmp) / "token"
        token.write_text(TOKEN)
        token.chmod(0o600)
        log = open(Path(tmp) / "server.log", "wb")  # noqa: SIM115
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flytecache",
                "serve",
                "--db",
                str(db),
                "--port",
                "18094",
                "--max-heartbeat",
                "5m",
                "--auth-token-file",
                str(token),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = "http://127.0.0.1:18094"
        try:
            import httpx

            for _ in range(300):
                try:
                    if httpx.get(url + "/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            with _browser.chromium(width=1280, height=900, tz="Europe/Berlin") as driver:
                driver.get(url + "/ui/login")
                driver.save_screenshot(str(target / "web-login.png"))
                driver.find_element("name", "token").send_keys(TOKEN)
                driver.find_element("css selector", "form.login button").click()
                time.sleep(1)
                for name, path in (
                    ("overview", "/ui/"),
                    ("entries", "/ui/entries?project=flytesnacks&limit=20"),
                    ("entry", "/ui/entry?key=" + quote(shown, safe="")),
                    ("reservations", "/ui/reservations"),
                ):
                    driver.get(url + path)
                    time.sleep(0.5)
                    height = driver.execute_script("return document.body.scrollHeight")
                    driver.set_window_size(1280, min(max(height + 20, 600), 1600))
                    driver.save_screenshot(str(target / f"web-{name}.png"))
                    print(f"wrote {target / f'web-{name}.png'}")
        finally:
            server.terminate()
            server.wait(30)
            log.close()


if __name__ == "__main__":
    main()
