"""End to end in a real headless Chromium: upload an image to the demo, see the labels, keep a screenshot.

Needs Debian's `chromium` + `chromium-driver` and pip `selenium`; skipped, saying which is missing, without them.
The screenshot lands in `test-artifacts/demo.png` at the repository root."""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from cskd_fastai.testing.runs import TINY_CLASSES, free_port, make_tiny_run, serve

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def _missing() -> str | None:
    "Why the browser test can't run here, or None."
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for f, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not f.exists(): return f"{f} not found (apt-get install -y {pkg})"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
              pytest.mark.filterwarnings("ignore:load_learner:UserWarning")]


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    profile = tempfile.mkdtemp(prefix="chromium-profile-")  # fresh profile: no state from earlier runs
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 f"--user-data-dir={profile}", "--window-size=1400,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_upload_shows_labels_in_chromium(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    runs = [make_tiny_run(tmp_path, "ce", seed=0), make_tiny_run(tmp_path, "cskd", seed=0)]
    image = tmp_path / "dog.png"  # a test image, enlarged so the screenshot shows it (the learner resizes it back)
    Image.open(sorted((tmp_path / "data" / "test" / "dog").glob("*.png"))[0]).resize((256, 256), Image.NEAREST).save(image)
    port = free_port()
    argv = [sys.executable, str(REPO / "apps" / "demo.py"), *map(str, runs), "--port", str(port)]
    with serve(argv, f"http://127.0.0.1:{port}/") as url:
        browser.get(url)
        upload = WebDriverWait(browser, 60).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#image-input input[type=file]"))[0]
        upload.send_keys(str(image))
        labels = [browser.find_element(By.ID, f"label-{i}") for i in range(len(runs))]
        # rendered labels: each model's top class as heading plus one row per class with its percentage
        WebDriverWait(browser, 60).until(lambda d: all(
            sum(c in lab.text for c in TINY_CLASSES) == len(TINY_CLASSES) and "%" in lab.text for lab in labels))
        status = browser.find_element(By.ID, "status").text
        confidence = browser.find_element(By.ID, "confidence-1").text
        # set the first model's T by hand: its confidence line and its calibration table follow
        box = browser.find_element(By.CSS_SELECTOR, "#temp-0 input[type=number]")
        box.clear(); box.send_keys("1", Keys.TAB)
        WebDriverWait(browser, 30).until(lambda d: "confident at T = 1 " in d.find_element(By.ID, "confidence-0").text
                                         and "T = 1 T = 1" in d.find_element(By.ID, "calibration-0").text)
        for _ in range(2):  # the page grows as it lays out at the new size: measure twice
            height = browser.execute_script("return document.body.scrollHeight")
            browser.set_window_size(1400, min(max(height + 200, 1000), 4000))  # whole page, calibration panel too
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "demo.png"))
    assert status.startswith("Predicted")
    assert "Top class" in confidence and "confident at T =" in confidence
    for lab in labels:
        assert lab.is_displayed() and lab.text.splitlines()[1] in TINY_CLASSES
