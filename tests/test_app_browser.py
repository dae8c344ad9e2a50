"""End to end in a real headless Chromium: upload an image to the demo, see the labels, keep a screenshot.

Needs Debian's `chromium` + `chromium-driver` and pip `selenium`; skipped, saying which is missing, without them.
The screenshot lands in `test-artifacts/demo.png` at the repository root."""
from __future__ import annotations

import re
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


def _full_page(browser, width: int) -> None:
    for _ in range(2):  # the page grows as it lays out at the new size: measure twice
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(width, min(max(height + 200, 800), 6000))


def test_upload_and_examples_in_chromium(tmp_path, browser):
    "The same checks at a desktop (1280x800) and a phone (390x844) width, on one server."
    runs = [make_tiny_run(tmp_path, "ce", seed=0), make_tiny_run(tmp_path, "cskd", seed=0)]
    image = tmp_path / "dog.png"  # a test image, enlarged so the screenshot shows it (the learner resizes it back)
    Image.open(sorted((tmp_path / "data" / "test" / "dog").glob("*.png"))[0]).resize((256, 256), Image.NEAREST).save(image)
    port = free_port()
    argv = [sys.executable, str(REPO / "apps" / "demo.py"), *map(str, runs), "--port", str(port)]
    with serve(argv, f"http://127.0.0.1:{port}/") as url:
        for width, height in ((1280, 800), (390, 844)):
            _check_page(browser, url, image, runs, width, height)


def _check_page(browser, url, image, runs, width, height):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    browser.set_window_size(width, height)
    browser.get(url)
    upload = WebDriverWait(browser, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#image-input input[type=file]"))[0]
    # 12: the examples are thumbnails (images), not text buttons
    thumbs = WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#examples img"))
    assert len(thumbs) >= 3 and all(t.get_attribute("src") for t in thumbs)
    upload.send_keys(str(image))
    panels = [browser.find_element(By.ID, f"confidence-{i}") for i in range(len(runs))]
    # each model's panel: its top class and one row per class with its probability
    WebDriverWait(browser, 60).until(lambda d: all(
        sum(c in p.text for c in TINY_CLASSES) == len(TINY_CLASSES) and "%" in p.text for p in panels))
    status = browser.find_element(By.ID, "status").text
    confidence = browser.find_element(By.ID, "confidence-1").text
    # 10: probabilities with a decimal (or < / > at the ends), never whole percents such as 100% / 0%
    rows = [l for l in confidence.splitlines() if "%" in l and not l.startswith("Top class")
            and "prediction set" not in l and "calibration" not in l]   # the set's lines name a coverage (90%)
    assert rows and all(re.search(r"\d+\.\d%|<0\.1%|>99\.9%", r) for r in rows), confidence
    assert not re.search(r"(?<![\d.])(100|0)%", confidence), confidence
    # 11: the slider is log10 T around the default: typing 0 sets T = 1, and the panels follow
    box = browser.find_element(By.CSS_SELECTOR, "#temp-0 input[type=number]")
    box.clear(); box.send_keys("0", Keys.TAB)
    WebDriverWait(browser, 30).until(lambda d: "at T = 1\n" in d.find_element(By.ID, "confidence-0").text + "\n"
                                     and "T = 1 (no scaling)" in d.find_element(By.ID, "calibration-0").text)
    # 12: picking an example shows its true class beside the predictions
    thumbs = browser.find_elements(By.CSS_SELECTOR, "#examples img")
    browser.execute_script("arguments[0].scrollIntoView(); arguments[0].click();", thumbs[0])
    WebDriverWait(browser, 60).until(lambda d: "true class" in d.find_element(By.ID, "status").text)
    ex_status = browser.find_element(By.ID, "status").text
    assert any(c in ex_status for c in TINY_CLASSES)
    WebDriverWait(browser, 30).until(lambda d: "True class:" in d.find_element(By.ID, "confidence-0").text)
    # 13: the calibration plot is rendered large enough to read (at least most of the page's width)
    plot = browser.find_element(By.CSS_SELECTOR, "#plot-0 img")
    assert plot.size["width"] >= 0.6 * browser.execute_script("return document.body.clientWidth")
    _full_page(browser, width)
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / f"demo-{width}.png"))
    assert status.startswith("Predicted")
    assert "Top class" in confidence and "at T =" in confidence
    # the conformal set beside the confidences (90% by default), with the line on what it guarantees
    WebDriverWait(browser, 30).until(lambda d: "90% prediction set" in d.find_element(By.ID, "confidence-1").text)
    assert "does not hold for images unlike them" in browser.find_element(By.ID, "confidence-1").text
    for p in panels:
        assert p.is_displayed() and any(f"Top class {c}" in p.text for c in TINY_CLASSES)
