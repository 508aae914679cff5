"""A real headless browser goes through every tab of the running app, runs each main action,
saves a screenshot per tab (tmp dir; also docs/screenshots/ with SAVE_SCREENSHOTS=1) and checks
what rendered."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROME = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"

webdriver = pytest.importorskip("selenium.webdriver")
if not (Path(CHROME).exists() and Path(DRIVER).exists()):
    pytest.skip("chromium/chromedriver not installed", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from conftest import make_images  # noqa: E402

pytestmark = pytest.mark.slow  # a live server and a browser

SHOTS = Path(tempfile.mkdtemp(prefix="softvq-shots-"))


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="softvq-chrome-")
    opts = Options()
    opts.binary_location = CHROME
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1900",
                 "--hide-scrollbars"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def ui_app(request, start_app):
    """The tiny-fixture app (conftest.tiny_app, shared with test_app.py); with
    SCREENSHOT_MODELS=embedded (and checkpoints/ filled) the app on
    its embedded models, for docs/screenshots/."""
    from softvq_demo.catalogue import embedded_available

    names = {e.kind: [] for e in embedded_available()}
    for e in embedded_available():
        names[e.kind].append(e.name)
    if os.environ.get("SCREENSHOT_MODELS") != "embedded" or len(names.get("tokenizer", [])) < 2:
        yield request.getfixturevalue("tiny_app")
        return
    from softvq_demo import load_tokenizer

    srv = start_app([])
    tmp = srv.tmp
    gens = names.get("generator", [])  # may still be training: the Generate tab is then shown idle
    files = make_images(tmp / "images")
    examples = ROOT / "assets" / "examples"
    for key, name in (("img0", "photo_coffee_300x200.jpg"), ("img1", "house_textscenes_03.png"),
                      ("img2", "moon_textscenes_00.png")):
        if (examples / name).is_file():
            files[key] = examples / name
    yield {**srv, "files": files, "a": names["tokenizer"][0], "b": names["tokenizer"][1],
           "gen": gens[0] if gens else None, "gen_b": gens[1] if len(gens) > 1 else None,
           "n_a": load_tokenizer(names["tokenizer"][0], device="cpu").num_tokens}


def wait(driver, cond, timeout=60, what="condition"):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: cond(d))
    except Exception as err:
        shot(driver, f"failed-{what.replace(' ', '-')}")
        raise AssertionError(f"timed out waiting for {what}") from err


def close_toasts(driver):
    driver.execute_script(
        "document.querySelectorAll('.toast-close, [data-testid=toast-close]').forEach(b => b.click())")
    time.sleep(0.3)


def shot(driver, name: str) -> Path:
    driver.execute_script("window.scrollTo(0, 0)")
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    if os.environ.get("SAVE_SCREENSHOTS") == "1" and not name.startswith("failed"):
        out = ROOT / "docs" / "screenshots"
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / path.name)
    return path


def el(driver, css):
    return driver.find_element(By.CSS_SELECTOR, css)


def upload(driver, container: str, *paths):
    box = el(driver, f"#{container} input[type=file]")
    box.send_keys("\n".join(str(p) for p in paths))


def click(driver, css):
    node = el(driver, css)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", node)


def with_text(driver, css: str) -> list[tuple]:
    """(element, its shown text: innerText with whitespace collapsed, "" when not shown) for every
    element matching ``css``, in one script call. WebElement.text costs a chromedriver round trip
    (~16 ms) per element, and the scans over every label or button of the page made ~600 of them
    (~10 s of this test). On this page the two read the same for the labels and tabs (checked
    element by element when this was written)."""
    return [tuple(pair) for pair in driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => [e, e.checkVisibility("
        "{opacityProperty: true, visibilityProperty: true}) ? e.innerText.replace(/\\s+/g, ' ')"
        ".trim() : '']);", css)]


def open_tab(driver, label: str):
    buttons = [b for b, t in with_text(driver, "button[role=tab]") if t == label]
    assert buttons, f"no tab {label!r}"
    driver.execute_script("arguments[0].click();", buttons[0])
    time.sleep(0.3)


def image_src(driver, container: str) -> str:
    imgs = driver.find_elements(By.CSS_SELECTOR, f"#{container} img")
    return imgs[0].get_attribute("src") if imgs else ""


def has_plot(driver, container: str) -> bool:
    return bool(driver.find_elements(By.CSS_SELECTOR, f"#{container} .js-plotly-plot .main-svg"))


def text(driver, container: str) -> str:
    nodes = driver.find_elements(By.CSS_SELECTOR, f"#{container}")
    return nodes[0].text if nodes else ""


def uploaded(driver, container: str):
    wait(driver, lambda d: image_src(d, container), 30, f"upload preview in {container}")


def test_every_tab(ui_app, browser):
    app = ui_app
    n = app["n_a"]
    d = browser
    files = app["files"]
    d.get(app["url"])
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "button[role=tab]"), 60, "tabs")
    tabs = [t for _, t in with_text(d, "button[role=tab]")]
    assert tabs[:6] == ["Reconstruct", "Token lab", "Codebook", "Latent map", "Generate", "Text tokens"]

    # 1. Reconstruct: a readable error first, then a real run with A and B side by side
    click(d, "#rec-run")
    wait(d, lambda d: "no image given" in d.find_element(By.TAG_NAME, "body").text, 30,
         "error toast")
    close_toasts(d)
    wait(d, lambda d: "no image given" not in d.find_element(By.TAG_NAME, "body").text, 15,
         "toast closed")
    upload(d, "rec-input", files["img0"])
    uploaded(d, "rec-input")
    click(d, "#rec-run")
    wait(d, lambda d: app["b"] in text(d, "rec-table") and image_src(d, "rec-a"), 60, "metrics")
    body = text(d, "rec-table")
    assert "PSNR" in body and app["a"] in body
    from PIL import Image
    w, h = Image.open(files["img0"]).size
    assert f"{w}×{h}" in text(d, "rec-notes")
    shot(d, "1-reconstruct")

    # 2. Token lab: ablate, select a token by clicking the grid, subsets, swap, interpolate
    open_tab(d, "Token lab")
    upload(d, "lab-a", files["img0"])
    upload(d, "lab-b", files["img1"])
    uploaded(d, "lab-a")
    uploaded(d, "lab-b")
    click(d, "#lab-run")
    wait(d, lambda d: f"{n} tokens ablated" in text(d, "lab-summary") and has_plot(d, "lab-bars"), 60,
         "ablation")
    assert image_src(d, "lab-grid")
    grid = el(d, "#lab-grid img")
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", grid)
    from selenium.webdriver import ActionChains
    w, h = grid.size["width"], grid.size["height"]
    # aim at the centre of token 1's tile: the grid (square, cols = rows = ceil(sqrt(n))) is the
    # left part of the picture, a colour bar its right; the picture is letterboxed in the element
    import math
    nw, nh = d.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", grid)
    cols = math.ceil(math.sqrt(n))
    scale = min(w / nw, h / nh)
    ox, oy = (w - nw * scale) / 2, (h - nh * scale) / 2
    x, y = ox + nh * scale * 1.5 / cols, oy + nh * scale * 0.5 / cols
    ActionChains(d).move_to_element_with_offset(grid, int(x - w / 2), int(y - h / 2)).click().perform()
    # the click lands on row 0, column 1 of the grid: token 1
    wait(d, lambda d: "Token 1: mean" in d.find_element(By.TAG_NAME, "body").text, 30,
         "token selection")
    click(d, "#lab-subset")
    click(d, "#lab-swap")
    click(d, "#lab-interp")
    wait(d, lambda d: f"Kept 4/{n}" in d.find_element(By.TAG_NAME, "body").text
         and "Swapped 4 token(s)" in d.find_element(By.TAG_NAME, "body").text
         and "t = 1.00" in d.page_source, 60, "subset, swap and interpolation")
    click(d, "#lab-prefix")   # the prefix strips of tokenizers A and B
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#lab-strip-a img")) >= 2
         and len(d.find_elements(By.CSS_SELECTOR, "#lab-strip-b img")) >= 2, 90, "prefix strips")
    shot(d, "2-token-lab")

    # 3. Codebook: soft posteriors and usage over the examples/uploads
    open_tab(d, "Codebook")
    upload(d, "cb-input", files["img2"])
    uploaded(d, "cb-input")
    click(d, "#cb-run")
    wait(d, lambda d: has_plot(d, "cb-post") and has_plot(d, "cb-entropy"), 60, "posteriors")
    assert "effective codewords" in text(d, "cb-notes")
    assert len(d.find_elements(By.CSS_SELECTOR, "#cb-post .heatmaplayer, #cb-post .hm")) >= 1
    shot(d, "3-codebook")

    # 4. Latent map from an uploaded batch (embedded models: the held-out textscenes split,
    # coloured by class); clicking a point shows that image
    open_tab(d, "Latent map")

    def pick(label):
        labels = [l for l, t in with_text(d, "label") if t == label]
        d.execute_script("arguments[0].click();", labels[-1])

    if n == 32:
        pick("textscenes")
        pick("class")
        expected = "200 held-out textscenes images"
    else:
        pick("upload")
        pick("image")       # uploads have no classes
        inputs = [i for i in d.find_elements(By.CSS_SELECTOR, "input[type=file][multiple]")
                  if i.is_enabled()]
        inputs[-1].send_keys("\n".join(str(files[k]) for k in ("img0", "img1", "img2", "rotated",
                                                                "rgba")))
        expected = "5 images"
    time.sleep(1.0)
    click(d, "#lm-run")
    wait(d, lambda d: has_plot(d, "lm-plot") and expected in text(d, "lm-notes"), 120, "latent map")
    d.execute_script("""
        const gd = document.querySelector('#lm-plot .js-plotly-plot');
        gd.emit('plotly_click', {points: [{customdata: [3, -1, '', 'rotated.jpg']}]});""")
    wait(d, lambda d: "Image 3" in text(d, "lm-caption") and image_src(d, "lm-orig"), 30,
         "clicked point")
    shot(d, "4-latent-map")

    # 5. Generate: gallery and timings
    open_tab(d, "Generate")
    if app["gen"] is None:
        shot(d, "5-generate")
    else:
        generate_in_browser(d, app)
    # 6. Text tokens: a held-out textscenes image with its ground-truth box, analysed for A and B
    open_tab(d, "Text tokens")
    click(d, "#tt-textscenes")
    uploaded(d, "tt-input")
    box = el(d, "#tt-boxes textarea, #tt-boxes input")
    wait(d, lambda d: len(box.get_attribute("value").split(",")) == 4, 30, "ground-truth box")
    wait(d, lambda d: image_src(d, "tt-canvas"), 30, "canvas")
    click(d, "#tt-run")
    wait(d, lambda d: "text tokens" in text(d, "tt-md-a") and has_plot(d, "tt-plot-a")
         and has_plot(d, "tt-plot-b"), 90, "text-token analysis")
    assert "effect in text" in text(d, "tt-table-a") and "rule:" in text(d, "tt-md-a")
    shot(d, "6-text-tokens")
    # "Clear boxes" clears the boxes and keeps the image on the canvas
    click(d, "#tt-clear")
    wait(d, lambda d: box.get_attribute("value") == "" and "boxes cleared" in d.page_source, 30,
         "boxes cleared")
    assert image_src(d, "tt-canvas") and image_src(d, "tt-input")

    # A failed catalogue load (offline): one readable line, no red "Error" badges on the pickers
    acc = [b for b, t in with_text(d, "button, .label-wrap") if "Models: loaded" in t]
    d.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", acc[0])
    time.sleep(0.5)
    hub = text(d, "catalogue")
    box = el(d, "#catalogue input")
    d.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus();", box)
    box.click()
    from selenium.webdriver.common.keys import Keys
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("softvq-l-64")
    time.sleep(0.5)
    box.send_keys(Keys.ENTER)
    time.sleep(0.5)
    click(d, "#load-model")
    wait(d, lambda d: "Could not load" in text(d, "load-status"), 60, "failed-load message")
    for picker in ("tok-a", "tok-b", "gen"):
        badges = d.find_elements(By.CSS_SELECTOR, f"#{picker} .error, #{picker} .status-tracker.error")
        assert not [b for b in badges if b.is_displayed()], (picker, hub)
        assert "Error" not in text(d, picker)
    assert len(text(d, "load-status").strip().splitlines()) == 1

    errors = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"
              and "favicon" not in e.get("message", "")] if hasattr(d, "get_log") else []
    assert not [e for e in errors if "Uncaught" in e.get("message", "")], errors
    assert len(list(SHOTS.glob("[1-6]-*.png"))) == 6


def generate_in_browser(d, app):
    """Generate tab: a run on the header's generator, then a switch to the MaskGIT one."""
    wait(d, lambda d: "0:" in text(d, "gen-classes"), 30, "class names")
    click(d, "#gen-run")
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gen-gallery img")) >= 4
         and "images / s" in text(d, "gen-timing"), 90, "generation")
    assert "cpu" in text(d, "gen-timing")
    shot(d, "5-generate")
    if app.get("gen_b") and app["b"] != "tiny_nol2":  # switching to MaskGIT: its classes, defaults
        from selenium.webdriver.common.keys import Keys
        box = el(d, "#gen input")
        driver_click = d.execute_script
        driver_click("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus();", box)
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(app["gen_b"])
        time.sleep(0.3)
        box.send_keys(Keys.ENTER)
        # the header change loads the MaskGIT's classes and sampler defaults (guidance decay)
        wait(d, lambda d: d.execute_script(
            "const r = [...document.querySelectorAll('input[type=radio]')].find(x => x.checked && "
            "['linear','constant','power-cosine'].includes(x.value)); return !!r"), 30,
             "MaskGIT sampler defaults")
        # MaskGIT hides the SiT controls: no SiT sampler methods, no guidance interval
        wait(d, lambda d: not d.execute_script(
            "return [...document.querySelectorAll('#gen-sampler input[type=radio]')]"
            ".some(x => ['euler','heun','sde'].includes(x.value) && x.offsetParent !== null)")
             and not [e for e in d.find_elements(By.CSS_SELECTOR, "#gen-g-low, #gen-g-high")
                      if e.is_displayed()], 30, "MaskGIT hides the SiT controls")
        click(d, "#gen-run")
        wait(d, lambda d: f"{app['gen_b']} → {app['b']}" in text(d, "gen-notes"), 60, "MaskGIT run")
