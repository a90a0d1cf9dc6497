"""The web page in headless Chromium against the running stack, with every non-loopback request
refused (a proxy that goes nowhere; loopback bypasses it): /docs renders offline; a job submitted
from the form shows its progress bar advance and its preview, lands in the gallery, is found by
search, opens with its parameters, and is deleted; a running job is cancelled from the queue.

Screenshots of each view go to tests/artifacts/web/ (or $DARKROOM_ARTIFACTS/web)."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack
from tests.support import wait_for_sync

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("DARKROOM_ARTIFACTS", Path(__file__).parents[1] / "artifacts")) / "web"

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs chromium and chromedriver")


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                     # No internet: everything but loopback goes to a port where nothing listens.
                     "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1;localhost",
                     "--disable-background-networking", "--disable-component-update"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {ARTIFACTS}")
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def wait(driver, condition, timeout: float = 60, what: str = ""):
    def probe(d):
        try:
            return condition(d)
        except StaleElementReferenceException:
            return False

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(probe, message=what)


def find(driver, css: str):
    return driver.find_element(By.CSS_SELECTOR, css)


def click(driver, css: str) -> None:
    """Click what `css` names, again if the page redrew it between finding and clicking (a live view)."""
    wait(driver, lambda d: find(d, css).click() or True, what=f"a click on {css}")


def signed_in(driver, stack: Stack) -> None:
    """Open the page and enter the key (once: it stays in localStorage)."""
    driver.get(f"{stack.url}/")
    wait(driver, lambda d: find(d, "#key-view").is_displayed() or d.execute_script("return document.body.dataset.ready"),
         what="the key form or the page")
    if find(driver, "#key-view").is_displayed():
        shot(driver, "01-key")
        find(driver, "#key-input").send_keys(stack.token, Keys.ENTER)
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready === 'true' && "
                                            "document.body.dataset.stream === 'live'"), what="the page and its stream")


def submit_from_form(driver, prompt: str, *, size: int, steps: int) -> str:
    find(driver, "nav [data-view=create]").click()
    for field, value in (("#prompt", prompt), ("#width", size), ("#height", size), ("#steps", steps), ("#seed", 5)):
        element = find(driver, field)
        element.clear()
        element.send_keys(str(value))
    find(driver, "#submit").click()
    answer = wait(driver, lambda d: (text := find(d, "#form-status").text) and not text.startswith("Submitting") and text,
                  what="an answer to the submit")
    assert answer.startswith("Queued"), answer
    # The queue is another view (hidden now): read the DOM, not what is displayed.
    return wait(driver, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#jobs .job')].filter("
        "j => j.querySelector('.prompt').textContent === arguments[0]).map(j => j.dataset.job)[0]", prompt),
        what="the job in the queue")


def test_docs_render_with_no_internet(browser, stack: Stack):
    browser.get(f"{stack.url}/docs")
    operations = wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) > 20 and
                      d.find_elements(By.CSS_SELECTOR, ".opblock"), what="Swagger UI's operations")
    assert any("/v1/jobs" in op.text for op in operations)
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(stack.url) for url in loaded), loaded
    shot(browser, "02-docs")


def test_submit_watch_find_open_and_delete(browser, stack: Stack, tiny_lora: Path):
    lora_dir = stack.data_dir / "models" / "loras"
    lora_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_lora, lora_dir / "webfox.safetensors")
    with stack.client() as client:
        wait_for_sync(lambda: client.get("/v1/loras/webfox").status_code == 200, timeout=30, what="the LoRA indexed")
    signed_in(browser, stack)
    word = f"kestrel{uuid.uuid4().hex[:6]}"
    prompt = f"a {word} over the sea"

    # The LoRA search answers as you type (a typo is fine); the keyboard picks one.
    search = find(browser, "#lora-search")
    search.send_keys("webfx")
    wait(browser, lambda d: [o.get_attribute("data-name") for o in d.find_elements(By.CSS_SELECTOR, "#lora-results [data-name]")]
         [:1] == ["webfox"], what="the LoRA found")
    search.send_keys(Keys.ARROW_DOWN, Keys.ENTER)
    wait(browser, lambda d: "webfox" in find(d, "#lora-chosen").text, what="the LoRA chosen")
    shot(browser, "03-create")

    job_id = submit_from_form(browser, prompt, size=256, steps=50)  # long enough to see previews arrive
    find(browser, "nav [data-view=queue]").click()
    row = f'#jobs [data-job="{job_id}"]'
    seen_steps: set[float] = set()
    preview_seen = False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        state = browser.execute_script(
            "const row = document.querySelector(arguments[0]); const p = row.querySelector('progress');"
            "const img = row.querySelector('img.thumb');"
            "return [row.dataset.status, p.value, p.max,"
            " img.alt === 'latest preview' && img.src.startsWith('blob:') && img.naturalWidth > 0];", row)
        status, value, maximum, has_preview = state
        if 0 < value < maximum:
            seen_steps.add(value)
        if has_preview and not preview_seen and status == "processing":
            preview_seen = True
            shot(browser, "04-queue-preview")
        if status in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.05)
    assert status == "completed", status
    assert seen_steps, "the progress bar never showed a step between the first and the last"
    assert preview_seen, "no preview appeared while the job ran"
    image_id = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, f"{row} .images img").get_attribute("data-image"),
                    what="the finished image in the queue")
    shot(browser, "05-queue-done")

    # The gallery has it; a search for its word finds it alone.
    find(browser, "nav [data-view=gallery]").click()
    tile = f'#gallery [data-image="{image_id}"]'
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, tile), what="the image in the gallery")
    find(browser, "#gallery-search").send_keys(word)
    wait(browser, lambda d: [t.get_attribute("data-image") for t in d.find_elements(By.CSS_SELECTOR, "#gallery li")]
         == [image_id], what="the search to find only this image")
    wait(browser, lambda d: d.execute_script(f"return document.querySelector('{tile} img').naturalWidth > 0"),
         what="the thumbnail drawn")
    shot(browser, "06-gallery-search")

    # Its detail says how it was made; its parameters go back into the form.
    click(browser, f"{tile} button")
    wait(browser, lambda d: find(d, "#detail").get_attribute("open") is not None, what="the detail dialog")
    wait(browser, lambda d: "Seed" in find(d, "#detail-params").text and "50" in find(d, "#detail-params").text,
         what="the parameters")
    params = find(browser, "#detail-params").text
    assert prompt in params and "256 × 256" in params and "tiny-sd" in params
    shot(browser, "07-detail")
    find(browser, "#detail-reuse").click()
    wait(browser, lambda d: find(d, "#create-view").is_displayed(), what="the form")
    assert find(browser, "#prompt").get_attribute("value") == prompt
    assert find(browser, "#steps").get_attribute("value") == "50"
    assert find(browser, "#width").get_attribute("value") == "256"

    # Delete (asks once more first).
    find(browser, "nav [data-view=gallery]").click()
    click(browser, f"{tile} button")
    wait(browser, lambda d: find(d, "#detail").get_attribute("open") is not None, what="the detail dialog")
    find(browser, "#detail-delete").click()
    assert find(browser, "#detail-delete").text == "Confirm delete"
    find(browser, "#detail-delete").click()
    wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, tile), what="the tile gone")
    with stack.client() as client:
        assert client.get(f"/v1/images/{image_id}").status_code == 404


def test_cancel_a_running_job_from_the_queue(browser, stack: Stack):
    signed_in(browser, stack)
    job_id = submit_from_form(browser, f"a long night {uuid.uuid4().hex[:6]}", size=256, steps=50)
    find(browser, "nav [data-view=queue]").click()
    row = f'#jobs [data-job="{job_id}"]'
    wait(browser, lambda d: d.execute_script(f"return document.querySelector('{row} progress').value >= 1"),
         timeout=120, what="the job running")
    click(browser, f"{row} .cancel")
    wait(browser, lambda d: find(d, row).get_attribute("data-status") == "cancelled", what="the job cancelled")
    assert not find(browser, f"{row} .cancel").is_displayed()
    shot(browser, "08-queue-cancelled")
    with stack.client() as client:
        doc = client.get(f"/v1/jobs/{job_id}").json()
    assert doc["status"] == "cancelled" and doc["images"] == [] and doc["progress"]["step"] < 50


def test_the_page_fits_a_phone(browser, stack: Stack):
    browser.set_window_size(390, 844)
    try:
        signed_in(browser, stack)
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
        shot(browser, "09-phone-create")
        find(browser, "nav [data-view=queue]").click()
        shot(browser, "10-phone-queue")
    finally:
        browser.set_window_size(1280, 1000)
