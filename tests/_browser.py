"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by selenium.

``.ci/run`` installs both; elsewhere the browser tests skip with the reason when they are
missing. Each browser gets a new empty profile and the flags that keep it off the network
(background networking is refused on the CI machines).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path(os.environ.get("FLYTECACHE_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("FLYTECACHE_CHROMEDRIVER", "/usr/bin/chromedriver"))
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def missing() -> str | None:
    """Why no browser can run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} not found (apt-get install {package}; .ci/run does)"
    return None


@contextmanager
def chromium(
    *, width: int = 1280, height: int = 900, tz: str | None = None, javascript: bool = True
) -> Iterator[Any]:
    """A selenium WebDriver on a fresh headless Chromium, quit (and its profile removed) after.

    ``tz`` sets the browser's time zone (an IANA name) through the driver's environment;
    ``javascript=False`` turns scripts off, as some readers have them.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="flytecache-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    if not javascript:
        options.add_argument("--blink-settings=scriptEnabled=false")
    env = {**os.environ, **({"TZ": tz} if tz else {})}
    service = Service(executable_path=str(CHROMEDRIVER), env=env)
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
