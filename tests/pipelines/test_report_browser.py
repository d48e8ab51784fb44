"""The report in a real headless browser: Debian's chromium + chromedriver, driven by selenium.

The session fixture installs ``chromium`` and ``chromium-driver`` with apt when
they are missing and we are root with a working apt; otherwise the test skips
with the reason. ``selenium`` comes from PyPI (``importorskip``). Selenium
Manager is never used (explicit driver and browser paths, ``SE_OFFLINE``), so
nothing is downloaded at test time beyond the apt packages.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.models.report.test_report import XSS_CAPTION, build_run, full_report

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
APT_PACKAGES = ("chromium", "chromium-driver")
APT_TIMEOUT_S = 300
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,2000")


def _browser_missing_reason() -> str | None:
    """Install chromium + chromedriver when missing; the reason they cannot be had, or None."""
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return None
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return f"{CHROMIUM} / {CHROMEDRIVER} missing and not root (apt-get install {' '.join(APT_PACKAGES)})"
    if shutil.which("apt-get") is None:
        return f"{CHROMIUM} / {CHROMEDRIVER} missing and no apt-get"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES]
    try:
        if subprocess.run(install, capture_output=True, timeout=APT_TIMEOUT_S, env=env).returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, timeout=APT_TIMEOUT_S, env=env, check=True)
            subprocess.run(install, capture_output=True, timeout=APT_TIMEOUT_S, env=env, check=True)
    except subprocess.CalledProcessError as exc:
        return f"apt-get failed ({exc.returncode}): {exc.stderr.decode(errors='replace')[-300:]}"
    except (subprocess.TimeoutExpired, OSError) as exc:
        return f"apt-get did not finish: {exc}"
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        return f"apt-get installed {APT_PACKAGES} but {CHROMIUM} / {CHROMEDRIVER} are still missing"
    return None


@pytest.fixture(scope="session")
def chromium_ready() -> None:
    reason = _browser_missing_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def driver(chromium_ready, tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")
        drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def test_report_in_headless_chromium(driver, tmp_path_factory, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    built = build_run(tmp_path_factory)
    index, _ = full_report(built, tmp_path, max_members=4)
    driver.get(Path(index).as_uri())
    assert driver.title == "dupmine report"

    # no console errors (CSP violations, missing files, script errors)
    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe

    # the planted XSS caption is displayed as text, and nothing ran
    texts = [e.get_attribute("textContent") for e in driver.find_elements(By.CSS_SELECTOR, ".caption")]
    assert any("<script>alert(1)</script>" in t for t in texts)
    assert any(XSS_CAPTION in t for t in texts)
    with pytest.raises(NoAlertPresentException):
        _ = driver.switch_to.alert
    assert driver.execute_script("return document.scripts.length") == 0
    assert driver.execute_script("return document.querySelectorAll('[onerror],[onload],[onclick]').length") == 0

    # every image decoded, from a file inside the report folder (file:// pages get no resource timing entries)
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.currentSrc, i.complete, i.naturalWidth])")
    assert len(images) > 10
    assert all(complete and width > 0 for _, complete, width in images), [i for i in images if not i[2]]
    root = Path(index).parent.as_uri() + "/"
    assert all(src.startswith(root) for src, _, _ in images), [src for src, _, _ in images if not src.startswith(root)][:5]
    assert driver.execute_script("return document.querySelectorAll('link,iframe,object,embed,base,form').length") == 0

    # in-page links land on their group cards
    link = driver.find_element(By.CSS_SELECTOR, '#word-triggers a[href^="#group-"]')
    target = link.get_attribute("href").split("#", 1)[1]
    driver.execute_script("arguments[0].click()", link)
    assert driver.execute_script("return location.hash") == "#" + target
    assert driver.find_element(By.ID, target).get_attribute("data-group-size")

    # a screenshot of the whole page
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1280, min(max(height, 800), 12000))
    shot = tmp_path / "report.png"
    assert driver.save_screenshot(str(shot))
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and shot.stat().st_size > 10_000
    with Image.open(shot) as im:
        im.load()
        assert im.size[0] > 0 and im.size[1] > 0
