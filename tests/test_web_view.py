"""The web view (``/ui/``) of a real ``flytecache serve``, driven by a real headless Chromium,
plus the HTTP-level rules (400 pages, headers, CSRF) checked with httpx."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import _browser
import httpx
import pytest
from _server_helpers import ServerProcess, get_req, ident, put_req, reserve_req
from connectrpc.errors import ConnectError
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import identifier_pb2, literals_pb2

from flytecache import CacheStore
from flytecache.store import admin

XSS = "<script>window.__pwned=1</script>"
TOKEN = "s3cret-t0ken"
REPORT_KEY = f"proj-dev-{XSS}-{'z' * 40}"  # long enough to be shortened in listings


def _literal(**scalar: Any) -> literals_pb2.Literal:
    return literals_pb2.Literal(scalar=literals_pb2.Scalar(**scalar))


def _outputs() -> cs.CachedOutput:
    """Inline outputs of every shape the entry page draws."""
    out = cs.CachedOutput()
    lits = out.output_literals.literals
    lits["n"].CopyFrom(_literal(primitive=literals_pb2.Primitive(integer=42)))
    lits["text"].CopyFrom(_literal(primitive=literals_pb2.Primitive(string_value=XSS)))
    lits["items"].collection.literals.extend(
        [_literal(primitive=literals_pb2.Primitive(float_value=x)) for x in (1.5, 2.5)]
    )
    lits["by_name"].map.literals["a"].CopyFrom(
        _literal(primitive=literals_pb2.Primitive(boolean=True))
    )
    lits["model"].CopyFrom(_literal(blob=literals_pb2.Blob(uri="s3://bucket/model.pt")))
    lits["frame"].CopyFrom(
        _literal(structured_dataset=literals_pb2.StructuredDataset(uri="s3://bucket/df.parquet"))
    )
    _metadata(out, "wf.report", "exec-42")
    return out


def _metadata(out: cs.CachedOutput, task: str, execution: str) -> None:
    out.metadata.source_identifier.CopyFrom(
        identifier_pb2.Identifier(
            resource_type=identifier_pb2.TASK,
            project="proj",
            domain="dev",
            name=task,
            version="v7",
        )
    )
    out.metadata.key_map.values.update(
        {"execution-name": execution, "exec-node": "n3", "exec-attempt": "1"}
    )


def _seed(db: Path) -> None:
    """Thirty entries of three tasks, one with a hostile key and outputs of every shape."""
    with CacheStore.open(db) as store:
        for i in range(30):
            out = cs.CachedOutput(output_uri=f"s3://bucket/{i}/outputs.pb")
            _metadata(out, f"wf.task_{i % 3}", f"exec-{i}")
            store.put(f"proj-dev-{'h' * 70}-{i:02d}", out)
        store.put(REPORT_KEY, _outputs())


def _serve(tmp: Path, *args: str) -> ServerProcess:
    db = tmp / "cache.db"
    _seed(db)
    # Leases last 1 s x 2: long enough to see counting, short enough to watch expire.
    return ServerProcess(
        db,
        "--max-heartbeat",
        "1s",
        "--grace-multiplier",
        "2",
        *args,
        log_path=tmp / "server.log",
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Read-only, no token."""
    with _serve(tmp_path_factory.mktemp("ui-open")) as proc:
        yield proc


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A token and --ui-admin."""
    tmp = tmp_path_factory.mktemp("ui-admin")
    token = tmp / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    with _serve(tmp, "--auth-token-file", str(token), "--ui-admin") as proc:
        yield proc


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _browser.missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests need Chromium in CI: {reason}")
        pytest.skip(reason)
    with _browser.chromium(tz="Asia/Tokyo") as driver:
        yield driver


def _css(driver: Any, selector: str) -> list[Any]:
    return list(driver.find_elements("css selector", selector))


def _sign_in(driver: Any, server: ServerProcess) -> None:
    driver.delete_all_cookies()
    driver.get(server.url + "/ui/login")
    driver.find_element("name", "token").send_keys(TOKEN)
    _click_through(driver, driver.find_element("css selector", "form.login button"))
    _wait(lambda: driver.current_url.endswith("/ui/"))


def _wait(condition: Any, timeout: float = 15.0) -> Any:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except (NoSuchElementException, StaleElementReferenceException):
            value = None  # the page was being replaced: look again
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def _click_through(driver: Any, element: Any) -> None:
    """Click ``element`` and wait until the browser has replaced the page.

    A click that submits a form or follows a link returns before the new page
    exists, so reading the page straight after it can still see the old one.
    """
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    old = driver.find_element("tag name", "html")
    element.click()

    def replaced() -> bool:
        try:
            return not old.is_enabled()  # any call on a replaced page's element raises
        except StaleElementReferenceException:
            return True
        except WebDriverException as error:
            # Chrome's answer when the call lands while the old document is being torn down.
            if "does not belong to the document" in str(error):
                return True
            raise

    _wait(replaced)


# -- in the browser --------------------------------------------------------------------------


def test_sign_in_with_the_token_sets_a_strict_http_only_cookie(
    browser: Any, admin_server: ServerProcess
) -> None:
    browser.delete_all_cookies()
    browser.get(admin_server.url + "/ui/entries?name=wf.task_1")
    assert "/ui/login" in browser.current_url  # sent to the form, remembering the page
    browser.find_element("name", "token").send_keys("wrong")
    _click_through(browser, browser.find_element("css selector", "form.login button"))
    assert "not this server" in browser.find_element("css selector", "[role=alert]").text
    browser.find_element("name", "token").send_keys(TOKEN)
    _click_through(browser, browser.find_element("css selector", "form.login button"))
    _wait(lambda: "/ui/entries?name=wf.task_1" in browser.current_url)
    assert browser.find_element("tag name", "h1").text == "Entries"
    (cookie,) = browser.get_cookies()
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"]  # a value derived from the token, not the token
    assert browser.execute_script("return document.cookie") == ""
    # The health check stays open; pages and metrics do not.
    assert httpx.get(admin_server.url + "/healthz").status_code == 200
    assert httpx.get(admin_server.url + "/ui/").status_code == 303
    assert httpx.get(admin_server.url + "/metrics").status_code == 401
    _click_through(browser, browser.find_element("css selector", "header form button"))  # sign out
    _wait(lambda: "/ui/login" in browser.current_url)
    browser.get(admin_server.url + "/ui/")
    assert "/ui/login" in browser.current_url


def test_filter_entries_and_page_through_them(browser: Any, server: ServerProcess) -> None:
    browser.get(server.url + "/ui/entries?limit=4")
    assert len(_css(browser, "table.entries tbody tr")) == 4
    browser.find_element("name", "name").send_keys("wf.task_2")
    _click_through(browser, browser.find_element("css selector", "form.filters button"))
    _wait(lambda: "name=wf.task_2" in browser.current_url)
    tasks = {td.text for td in _css(browser, "td.task")}
    assert tasks == {"wf.task_2"} and len(_css(browser, "td.task")) == 4
    seen = [a.get_attribute("title") for a in _css(browser, ".key a")]
    while _css(browser, "a[rel=next]"):
        _click_through(browser, _css(browser, "a[rel=next]")[0])
        _wait(lambda: browser.find_element("tag name", "h1").text == "Entries")
        seen += [a.get_attribute("title") for a in _css(browser, ".key a")]
    # Every entry of the task once, newest first (its keys end in i = 29, 26, ..., 2).
    assert seen == [f"proj-dev-{'h' * 70}-{i:02d}" for i in range(29, 0, -3)]
    browser.get(server.url + "/ui/entries?older=1d")
    assert "No entries match" in browser.find_element("tag name", "tbody").text


def test_open_an_entry_from_the_list(browser: Any, server: ServerProcess) -> None:
    browser.get(server.url + "/ui/entries?name=wf.report")
    link = browser.find_element("css selector", ".key a")
    assert link.text != link.get_attribute("title")  # shortened, the full key one hover away
    copy = browser.find_element("css selector", ".key button.copy")
    assert copy.get_attribute("data-copy") == REPORT_KEY
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": server.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    copy.click()
    _wait(lambda: "done" in copy.get_attribute("class"))
    pasted = browser.execute_async_script(
        "navigator.clipboard.readText().then(arguments[0], e => arguments[0]('error: ' + e))"
    )
    assert pasted == REPORT_KEY  # the full key, one click away
    _click_through(browser, link)
    _wait(lambda: "/ui/entry?" in browser.current_url)
    assert browser.find_element("id", "key").text == REPORT_KEY
    outputs = browser.find_element("css selector", "ul.outputs").text
    for shown in (
        "n: integer 42",
        "items: collection 2 items",
        "[1]: float 2.5",
        "a: boolean true",
        "model: blob single file s3://bucket/model.pt",
        "frame: structured dataset s3://bucket/df.parquet",
    ):
        assert shown in outputs
    page = browser.find_element("tag name", "main").text
    assert "exec-42" in page and "n3" in page and "wf.report" in page
    # Times in the viewer's zone (the browser runs in Asia/Tokyo, UTC+9).
    created = browser.find_element("css selector", "#created time")
    utc = datetime.fromisoformat(created.get_attribute("datetime").replace("Z", "+00:00"))
    tokyo = (utc + timedelta(hours=9)).strftime("%Y-%m-%d %H:%M:%S")
    assert created.text == tokyo
    assert "UTC+09:00" in browser.find_element("css selector", "footer").text


def test_a_lease_counts_down_and_expires(browser: Any, server: ServerProcess) -> None:
    client = server.client()
    client.get_or_extend_reservation(
        reserve_req("waiting-on-me", "exec-77-n0-0", timedelta(seconds=1))
    )
    browser.get(server.url + "/ui/reservations?q=exec-77")
    row = browser.find_element("css selector", "table.leases tbody tr")
    assert "exec-77-n0-0" in row.text and "proj-dev-waiting-on-me" in row.text
    left = browser.find_element("css selector", "td.left")
    first = float(re.match(r"([\d.]+) s", left.text).group(1))  # type: ignore[union-attr]
    assert 0 < first <= 2.0
    _wait(lambda: left.text != f"{first:.1f} s" and left.text.endswith(" s"), timeout=5)
    _wait(lambda: left.text == "expired", timeout=10)
    assert "expired" in row.get_attribute("class")
    # Reloaded, the server agrees.
    browser.get(server.url + "/ui/reservations?q=exec-77&state=expired")
    assert "exec-77-n0-0" in browser.find_element("css selector", "table.leases").text


def test_every_page_reads_without_javascript(server: ServerProcess) -> None:
    if _browser.missing():
        pytest.skip(str(_browser.missing()))
    server.client().get_or_extend_reservation(
        reserve_req("no-js", "exec-nojs", timedelta(seconds=1))
    )
    with _browser.chromium(javascript=False) as driver:
        driver.get(server.url + "/ui/entries?name=wf.task_0")
        assert len(_css(driver, "table.entries tbody tr")) == 10
        # Times stay in UTC, said so, without the script that localises them.
        assert _css(driver, "td time")[0].text.endswith(" UTC")
        _click_through(driver, driver.find_element("css selector", ".key a"))
        _wait(lambda: "/ui/entry?" in driver.current_url)
        assert "exec-" in driver.find_element("tag name", "main").text
        driver.get(server.url + "/ui/reservations?q=exec-nojs")
        assert re.fullmatch(
            r"[\d.]+ s|expired", driver.find_element("css selector", "td.left").text
        )
        driver.get(server.url + "/ui/")
        assert driver.find_element("id", "entries").text


def test_keys_and_strings_are_text_never_markup(browser: Any, server: ServerProcess) -> None:
    for page in (
        "/ui/entries?name=wf.report",
        f"/ui/entry?key={quote(f'proj-dev-{XSS}', safe='')}",
        f"/ui/entries?project={quote(XSS)}",
        f"/ui/entry?key={quote(XSS)}",  # the 404 page repeats the key
    ):
        browser.get(server.url + page)
        assert browser.execute_script("return window.__pwned === undefined")
        assert not _css(browser, "main script")
    assert XSS in browser.find_element("tag name", "main").text


def test_the_view_is_read_only_without_ui_admin(browser: Any, server: ServerProcess) -> None:
    key = f"proj-dev-{'h' * 70}-00"
    browser.get(server.url + f"/ui/entry?key={quote(key, safe='')}")
    assert not _css(browser, "#delete-entry")
    server.client().get_or_extend_reservation(reserve_req("ro-lease", "exec-ro"))
    browser.get(server.url + "/ui/reservations?q=ro-lease")
    assert not _css(browser, "button.release")
    assert "read-only" in browser.find_element("css selector", "header").text
    # A hand-made POST (with a valid-looking form) is refused too.
    response = httpx.post(server.url + "/ui/entry/delete", data={"key": key, "csrf": "x"})
    assert response.status_code == 403 and "--ui-admin" in response.text
    with CacheStore.open(_db(server)) as store:
        assert store.get(key)


def test_admin_buttons_delete_an_entry_and_release_a_lease(
    browser: Any, admin_server: ServerProcess
) -> None:
    _sign_in(browser, admin_server)
    key = f"proj-dev-{'h' * 70}-05"
    browser.get(admin_server.url + f"/ui/entry?key={quote(key, safe='')}")
    _click_through(browser, browser.find_element("id", "delete-entry"))
    _wait(lambda: browser.current_url.endswith("/ui/entries"))
    with CacheStore.open(_db(admin_server)) as store:
        assert key not in {e.key for e in _all_entries(store)}
    admin_server.client().get_or_extend_reservation(
        reserve_req("held", "exec-holder", timedelta(seconds=1), identifier=ident("proj", "dev")),
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    browser.get(admin_server.url + "/ui/reservations?q=exec-holder")
    _click_through(browser, browser.find_element("css selector", "button.release"))
    _wait(lambda: "No reservations match" in browser.find_element("tag name", "tbody").text)
    assert "q=exec-holder" in browser.current_url  # back where the button was


def _db(server: ServerProcess) -> str:
    return server.args[server.args.index("--db") + 1]


def _all_entries(store: CacheStore) -> list[Any]:
    return list(admin.iter_entries(store))


# -- over plain HTTP -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/ui/entries?bogus=1",
        "/ui/entries?limit=0",
        "/ui/entries?limit=abc",
        "/ui/entries?limit=1&limit=2",
        "/ui/entries?after=nope",
        "/ui/entries?after=%C2%B2.1",  # a superscript two: a digit to isdigit(), not to int()
        "/ui/entries?after=9223372036854775808.1",  # past a 64-bit column
        "/ui/entries?after=1.9223372036854775808",
        "/ui/entries?limit=%C2%B2",
        "/ui/entries?limit=%E2%91%A0",
        "/ui/reservations?refresh=%C2%B2",
        "/ui/entries?newer=yesterday",
        "/ui/entries?older=9999999999999d",
        "/ui/entries?project=" + "p" * 300,
        "/ui/entries?project=%FF",
        "/ui/entries?name=a%00b",
        "/ui/entry",
        "/ui/entry?key=",
        "/ui/reservations?state=held",
        "/ui/reservations?refresh=1",
        "/ui/?x=1",
        "/ui/login?next=a&next=b",
    ],
)
def test_bad_parameters_get_a_400_page(server: ServerProcess, path: str) -> None:
    response = httpx.get(server.url + path)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "Bad request" in response.text


def test_pages_say_how_long_they_took_and_lock_down_the_browser(server: ServerProcess) -> None:
    for path in ("/ui/", "/ui/entries", "/ui/reservations"):
        response = httpx.get(server.url + path)
        assert response.status_code == 200
        timing = response.headers["server-timing"]
        # (The overview's figures may come from its 30 s cache: then no store time.)
        assert re.fullmatch(r"(store;dur=[\d.]+, )?total;dur=[\d.]+", timing), timing
        assert path == "/ui/" or timing.startswith("store;")
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert response.headers["cache-control"] == "no-store"
    assert httpx.get(server.url + "/").headers["location"] == "/ui/"
    assert httpx.head(server.url + "/ui/entries").content == b""
    css = httpx.get(server.url + "/ui/static/ui.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    for missing in ("/ui/static/../app.py", "/ui/static/nope.js", "/ui/nope"):
        assert httpx.get(server.url + missing).status_code == 404
    read_only = httpx.post(server.url + "/ui/entries")
    assert read_only.status_code == 405 and read_only.headers["allow"] == "GET, HEAD"
    action = httpx.get(server.url + "/ui/entry/delete")
    assert action.status_code == 405 and action.headers["allow"] == "POST"
    # A NUL in the path is shown escaped in the 404 page, never raw.
    nul = httpx.get(server.url + "/ui/static/ui.css%00")
    assert nul.status_code == 404 and r"ui.css\x00" in nul.text and "\x00" not in nul.text
    big = httpx.post(server.url + "/ui/logout", content=b"csrf=" + b"x" * 100_000)
    assert big.status_code == 413


def test_hits_and_misses_since_start_come_from_the_server_counters(server: ServerProcess) -> None:
    client = server.client()
    before = _counts(server)
    client.put(put_req("counted", cs.CachedOutput(output_uri="s3://b/o.pb")))
    client.get(get_req("counted"))
    with pytest.raises(ConnectError):
        client.get(get_req("absent"))
    assert _counts(server) == (before[0] + 1, before[1] + 1)


def _counts(server: ServerProcess) -> tuple[int, int]:
    page = httpx.get(server.url + "/ui/").text
    hits = re.search(r'id="hits">([\d,]+)<', page)
    misses = re.search(r'id="misses">([\d,]+)<', page)
    assert hits and misses
    return int(hits.group(1).replace(",", "")), int(misses.group(1).replace(",", ""))


def test_admin_actions_need_the_form_token(admin_server: ServerProcess) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    key = f"proj-dev-{'h' * 70}-07"
    # Signed in (the bearer header), but without the page's CSRF token: refused.
    for data in ({"key": key}, {"key": key, "csrf": "0" * 64}):
        response = httpx.post(admin_server.url + "/ui/entry/delete", data=data, headers=auth)
        assert response.status_code == 403 and "security token" in response.text
    # From another site's page (the browser says so in Origin): refused.
    page = httpx.get(admin_server.url + f"/ui/entry?key={quote(key, safe='')}", headers=auth)
    token = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert token is not None
    crossed = httpx.post(
        admin_server.url + "/ui/entry/delete",
        data={"key": key, "csrf": token.group(1)},
        headers={**auth, "origin": "https://evil.example"},
    )
    assert crossed.status_code == 403 and "another site" in crossed.text
    # A script with a wrong token gets a status, not the sign-in form.
    wrong = httpx.get(admin_server.url + "/ui/entries", headers={"authorization": "Bearer no"})
    assert wrong.status_code == 401 and "Wrong token" in wrong.text
    assert httpx.get(admin_server.url + "/ui/entries").status_code == 303  # a browser: the form
    # Not signed in at all: refused before anything else.
    assert httpx.post(admin_server.url + "/ui/entry/delete", data={"key": key}).status_code == 401
    page = httpx.get(admin_server.url + f"/ui/entry?key={quote(key, safe='')}", headers=auth)
    csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert csrf is not None
    done = httpx.post(
        admin_server.url + "/ui/entry/delete",
        data={"key": key, "csrf": csrf.group(1)},
        headers=auth,
    )
    assert done.status_code == 303


def test_a_release_goes_back_only_to_the_listing(admin_server: ServerProcess) -> None:
    """The form's ``back`` is a page of the listing or nothing: a line break (a header
    injection) or another site sends the browser to the listing, after the release."""
    auth = {"authorization": f"Bearer {TOKEN}"}
    page = httpx.get(admin_server.url + "/ui/reservations", headers=auth)
    csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert csrf is not None
    for back, location in [
        ("/ui/reservations\r\nSet-Cookie: pwn=1", "/ui/reservations"),
        ("https://evil.example/ui/reservations", "/ui/reservations"),
        ("/ui/reservations?", "/ui/reservations"),
        ("/ui/reservations?q=caf\u00e9 <x>", "/ui/reservations?q=caf%C3%A9%20%3Cx%3E"),
    ]:
        data = {"key": "proj-dev-none", "owner": "o", "csrf": csrf.group(1), "back": back}
        response = httpx.post(
            admin_server.url + "/ui/reservations/release", data=data, headers=auth
        )
        assert response.status_code == 303, response.text
        assert response.headers["location"] == location
        assert "pwn" not in response.headers.get("set-cookie", "")
    assert httpx.get(admin_server.url + "/healthz").status_code == 200


def test_admin_forms_work_whichever_worker_answers(tmp_path: Path) -> None:
    """With --workers, each worker checks the forms any of them rendered (one CSRF key for
    the server, drawn before forking); a restart draws a new one."""
    db = tmp_path / "cache.db"
    _seed(db)
    with ServerProcess(
        db, "--workers", "2", "--ui-admin", log_path=tmp_path / "server.log"
    ) as proc:
        key = quote(f"proj-dev-{'h' * 70}-00", safe="")
        tokens = set()
        for _ in range(6):  # new connections: the kernel spreads them over the workers
            page = httpx.get(f"{proc.url}/ui/entry?key={key}")
            tokens.update(re.findall(r'name="csrf" value="([0-9a-f]{64})"', page.text))
        assert len(tokens) == 1
        csrf = tokens.pop()
        answers = [
            httpx.post(
                proc.url + "/ui/entry/delete",
                data={"key": f"proj-dev-{'h' * 70}-{n:02d}", "csrf": csrf},
            ).status_code
            for n in range(12)
        ]
        assert answers == [303] * 12


def test_open_redirects_are_refused(admin_server: ServerProcess) -> None:
    for target in ("https://evil.example/", "//evil.example/", "/ui//evil.example", "/metrics"):
        response = httpx.post(admin_server.url + "/ui/login", data={"token": TOKEN, "next": target})
        assert response.status_code == 303 and response.headers["location"] == "/ui/"


def test_no_ui_leaves_only_the_service(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "c.db", "--no-ui", log_path=tmp_path / "log") as proc:
        response = httpx.get(proc.url + "/ui/")
        assert response.status_code == 404 and response.json()["code"] == "unimplemented"


def test_ui_admin_needs_the_ui(tmp_path: Path) -> None:
    from _cli import run

    result = run(str(tmp_path / "c.db"), "serve", "--no-ui", "--ui-admin", "--port", "0")
    assert result.exit_code == 2 and "ui_admin needs the web view" in result.output


def test_every_page_on_postgresql(tmp_path: Path, migrated_pg_url: str) -> None:
    """The same pages over PostgreSQL (the database size instead of files, its clock)."""
    with CacheStore.open(migrated_pg_url) as store:
        out = cs.CachedOutput(output_uri="s3://bucket/pg/outputs.pb")
        _metadata(out, "wf.pg_task", "exec-pg")
        store.put("proj-dev-on-postgres", out)
        store.get_or_extend_reservation("proj-dev-leased", "exec-pg-n0-0", timedelta(seconds=5))
    with ServerProcess(migrated_pg_url, "--port", "0", log_path=tmp_path / "log") as proc:
        pages = {
            "/ui/": "Schema revision",
            "/ui/entries?project=proj&domain=dev": "wf.pg_task",
            "/ui/entries?project=proj&domain=dev&name=wf.pg_task": "wf.pg_task",
            "/ui/entry?key=proj-dev-on-postgres": "exec-pg",
            "/ui/reservations?q=exec-pg": "exec-pg-n0-0",
        }
        for path, shown in pages.items():
            response = httpx.get(proc.url + path)
            assert response.status_code == 200, (path, response.text)
            assert shown in response.text, path
