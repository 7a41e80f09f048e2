"""`make test-browser` (not part of `make test`): the web demo driven in a real browser.

examples/app.py serves a pipeline on 127.0.0.1 in a subprocess; Selenium drives Debian's headless Chromium through
Debian's chromedriver (no driver download: Selenium Manager runs offline and is given both paths). The test chooses a
class, presses Resample all, checks the gallery holds non-blank PNGs, presses Resample visual and checks the prologue
ids stay while the images change, uploads a wrong-size image and checks its reconstruction, its prologue ids and its
variations appear, shows the attention map of a clicked sample, checks that the page fetched nothing from outside
127.0.0.1, and saves a full-page screenshot to docs/figures/app.png (the README shows it).

Environment:
    PROLOGUE_APP_PIPELINE    pipeline folder to serve (default: a tiny random pipeline saved to a temporary folder;
                             `make test-browser` passes demo_out/pipeline when `make demo` has written it)
    PROLOGUE_APP_SCREENSHOT  where the screenshot goes (default docs/figures/app.png)
    CHROMIUM, CHROMEDRIVER   binaries (default /usr/bin/chromium, /usr/bin/chromedriver)
"""

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = Path(os.environ.get("PROLOGUE_APP_SCREENSHOT", REPO / "docs" / "figures" / "app.png"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
NUM_IMAGES = 4  # the app's default number of images
TIMEOUT = 120  # seconds for any one wait (sampling a real pipeline on a shared CPU)

os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not try to download a driver or a browser

from selenium import webdriver  # noqa: E402  (`make test-browser` installs selenium)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory) -> Path:
    if os.environ.get("PROLOGUE_APP_PIPELINE"):
        return Path(os.environ["PROLOGUE_APP_PIPELINE"])
    from prologue_hf.testing import tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny_pipeline")
    tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipeline_info(pipeline_dir) -> dict:
    """Class names, image size and K, read from the saved configs (the test never imports the pipeline)."""
    index = json.loads((pipeline_dir / "model_index.json").read_text())
    tokenizer = json.loads((pipeline_dir / "tokenizer" / "config.json").read_text())
    ar = json.loads((pipeline_dir / "ar" / "config.json").read_text())
    id2label = index.get("id2label") or {}
    names = [str(id2label.get(str(i), i)) for i in range(ar["num_classes"])]
    return {"names": names, "image_size": tokenizer["image_size"], "k": ar["num_prologue_tokens"]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(pipeline_dir, tmp_path_factory):
    """examples/app.py in a subprocess on 127.0.0.1:<free port>; yields its URL."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "app.log"
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    command = [sys.executable, str(REPO / "examples" / "app.py"), "--pipeline", str(pipeline_dir), "--port", str(port)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"the app exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer on {url} within 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not Path(binary).exists():
            pytest.fail(f"{binary} is missing: `make test-browser` installs the Debian packages chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}",
        "--window-size=1400,1000",
        # any host but the app's resolves to nothing: a stray fetch fails instead of reaching the internet
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# --------------------------------------------------------------------------------------------- helpers
def _wait(driver, condition, message: str, timeout: float = TIMEOUT):
    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(lambda d: condition(d) or None, message=message)


def _loaded_images(driver, selector: str) -> list[str]:
    """The src of every fully loaded <img> under ``selector``."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".filter(img => img.complete && img.naturalWidth > 0).map(img => img.src);",
        selector,
    )


def _fetch_png(url: str) -> np.ndarray:
    assert url.startswith("http://127.0.0.1:"), url
    with urllib.request.urlopen(url, timeout=30) as response:
        data = response.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{url} is not a PNG"
    with PIL.Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))


def _gallery(driver, count: int, previous: list[str] | None = None, selector: str = "#gallery") -> list[str]:
    """Wait until ``selector`` shows ``count`` loaded thumbnails (other than ``previous``) and return their srcs."""

    def ready(d):
        srcs = _loaded_images(d, f"{selector} .thumbnails img, {selector} .grid-wrap img")
        if len(srcs) != count or (previous is not None and srcs == previous):
            return None
        return srcs

    return _wait(driver, ready, f"{selector} did not show {count} new images")


def _textarea(driver, elem_id: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea").get_attribute("value")


def _check_ids(text: str, lines: int, k: int) -> list[list[int]]:
    rows = [[int(v) for v in line.split()] for line in text.strip().splitlines()]
    assert len(rows) == lines and all(len(row) == k for row in rows), text
    return rows


# --------------------------------------------------------------------------------------------- the test
def test_app_in_a_real_browser(server, browser, pipeline_info, tmp_path):
    names, size, k = pipeline_info["names"], pipeline_info["image_size"], pipeline_info["k"]
    assert k > 0, "the browser test needs a pipeline with prologue tokens"
    browser.get(server)
    _wait(browser, lambda d: d.find_elements(By.ID, "resample-all"), "the page did not render")

    # choose a class by typing in the searchable menu and clicking the match
    name = names[min(7, len(names) - 1)]
    class_input = browser.find_element(By.CSS_SELECTOR, "#class input")
    class_input.click()
    class_input.clear()
    class_input.send_keys(name)
    option = _wait(
        browser,
        lambda d: [o for o in d.find_elements(By.CSS_SELECTOR, "[role=option]") if o.get_attribute("aria-label") == name],
        f"the class menu did not offer {name!r}",
    )[0]
    option.click()
    assert class_input.get_attribute("value") == name

    # Resample all -> the gallery fills with non-blank PNGs of the pipeline's size; their prologue ids are shown
    browser.find_element(By.ID, "resample-all").click()
    first_srcs = _gallery(browser, NUM_IMAGES)
    first = np.stack([_fetch_png(src) for src in first_srcs])
    assert first.shape == (NUM_IMAGES, size, size, 3)
    for image in first:
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 1, "a blank (single-color) image"
    message = browser.find_element(By.ID, "message").text
    assert f"{NUM_IMAGES} image(s) of {name}" in message, message
    prologue_text = _textarea(browser, "prologue-ids")
    _check_ids(prologue_text, NUM_IMAGES, k)

    # Resample visual -> the same prologue ids, different images
    browser.find_element(By.ID, "resample-visual").click()
    second_srcs = _gallery(browser, NUM_IMAGES, previous=first_srcs)
    _wait(browser, lambda d: "redrawn under the given prologue" in d.find_element(By.ID, "message").text, "no message")
    second = np.stack([_fetch_png(src) for src in second_srcs])
    assert _textarea(browser, "prologue-ids") == prologue_text
    assert not np.array_equal(second, first), "Resample visual returned the same images"

    # click sample #1 -> its index; the attention map of that sample appears
    thumbnails = browser.find_elements(By.CSS_SELECTOR, "#gallery .thumbnails img, #gallery .grid-wrap img")
    thumbnails[1].click()
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#image-index input").get_attribute("value") == "1", "no select")
    for close in browser.find_elements(By.CSS_SELECTOR, "#gallery button[aria-label='Close']"):
        close.click()  # leave the large preview the click opened
    browser.find_element(By.ID, "attention").click()
    attention_src = _wait(browser, lambda d: _loaded_images(d, "#attention-map img"), "no attention map")[0]
    attention = _fetch_png(attention_src)
    assert attention.shape[1] > attention.shape[0] and attention.std() > 10

    # upload a wrong-size image (an embedded Fashion-MNIST test image, enlarged 3x) -> resized, reconstructed
    from prologue_hf.fashion_mnist import load_fashion_mnist

    sample = load_fashion_mnist("test", size, max_per_class=1)[0]["image"]
    upload_path = tmp_path / "upload.png"
    sample.resize((3 * size, 3 * size), PIL.Image.Resampling.NEAREST).save(upload_path)
    browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(upload_path))
    reconstruction_src = _wait(browser, lambda d: _loaded_images(d, "#reconstruction img"), "no reconstruction")[0]
    reconstruction = _fetch_png(reconstruction_src)
    assert reconstruction.shape == (size, size, 3) and reconstruction.std() > 0
    _wait(browser, lambda d: _textarea(d, "upload-prologue-ids").strip(), "no prologue ids for the upload")
    _check_ids(_textarea(browser, "upload-prologue-ids"), 1, k)
    upload_message = browser.find_element(By.ID, "upload-message").text
    assert f"resized from {3 * size}x{3 * size} to {size}x{size}" in upload_message, upload_message

    # variations under the upload's prologue
    browser.find_element(By.ID, "variations-button").click()
    variation_srcs = _gallery(browser, NUM_IMAGES, selector="#variations")
    assert all(_fetch_png(src).shape == (size, size, 3) for src in variation_srcs)

    # a full-page screenshot for the README (Chromium renders the whole page, beyond the window)
    browser.execute_script("window.scrollTo(0, 0);")
    time.sleep(0.5)
    page = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": page["width"], "height": page["height"], "scale": 1},
        },
    )
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
    with PIL.Image.open(SCREENSHOT) as image:
        assert image.format == "PNG" and image.size[0] >= 1000 and image.size[1] >= page["height"] - 1

    # a class the pipeline does not know -> the error message on the page; the last images are not replaced
    class_input.click()
    class_input.clear()
    class_input.send_keys("no such class")
    browser.find_element(By.ID, "seed").click()  # leave the menu: the typed value is kept (custom values allowed)
    browser.find_element(By.ID, "resample-all").click()
    _wait(browser, lambda d: "unknown label name 'no such class'" in d.find_element(By.TAG_NAME, "body").text, "no error")
    assert _loaded_images(browser, "#gallery .thumbnails img, #gallery .grid-wrap img") == second_srcs

    # nothing but the app: every request the page made went to 127.0.0.1:<port> (or stayed inside the browser)
    origin = server.rstrip("/")
    requested = set()
    for entry in browser.get_log("performance"):
        event = json.loads(entry["message"])["message"]
        if event["method"] == "Network.requestWillBeSent":
            requested.add(event["params"]["request"]["url"])
    outside = sorted(
        url for url in requested
        if not url.startswith((origin, origin.replace("http", "ws"), "data:", "blob:", "chrome:", "about:"))
    )  # fmt: skip
    assert any(url.startswith(origin) for url in requested) and not outside, outside
