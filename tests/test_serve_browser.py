"""The drawing page in a real browser: Debian's Chromium, driven by Playwright, against a real
uvicorn server on a free loopback port. Strokes drawn with the mouse must be predicted as the
digit they draw, and a photo-like image uploaded through the page's file input as its digit.

Playwright's own browser download (`playwright install`) is never used: `make test` installs
Chromium from the distribution. Without it this test skips, except under CI=true, where a
missing browser is a failure and not a silent skip.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from photo_digits import photo_like
from serving import serving
from trained_model import tiny_checkpoint

from mnist_classifier.batching import normalize
from mnist_classifier.checkpoint import load_checkpoint
from mnist_classifier.data import load_split
from mnist_classifier.preprocess import preprocess_image
from mnist_classifier.serve.loading import load_checkpoint_model

pytestmark = pytest.mark.slow  # trains the tiny model and starts a browser

PAD = "#pad"
# Strokes in the 280x280 canvas's own pixels, checked to be read as their digit by the tiny
# model: a "7" is a top bar and a long diagonal, a "1" one upright line.
STROKES = {
    "7": [[(70, 60), (210, 60), (120, 235)]],
    "1": [[(150, 40), (140, 240)]],
}


@pytest.fixture(scope="module")
def server_url(mnist_dir):
    with serving(load_checkpoint_model(tiny_checkpoint(mnist_dir), stage="test")) as url:
        yield url


def draw(page, strokes) -> None:
    box = page.locator(PAD).bounding_box()
    scale = box["width"] / 280  # the canvas is shown smaller in a narrow window
    for stroke in strokes:
        (x, y), *rest = stroke
        page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
        page.mouse.down()
        for x, y in rest:
            page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=12)
        page.mouse.up()


def shown_prediction(page) -> str:
    page.wait_for_function(
        "document.getElementById('result').dataset.pending === 'false'"
        " && document.getElementById('digit').textContent !== ''",
        timeout=10_000,
    )
    return page.locator("#digit").text_content()


@pytest.mark.parametrize(
    ("digit", "width"), [("7", 900), ("1", 360)], ids=["seven-wide", "one-narrow"]
)
def test_a_digit_drawn_with_the_mouse_is_predicted(browser, server_url, tmp_path, digit, width):
    page = browser.new_page(viewport={"width": width, "height": 720})
    page.goto(server_url)
    assert page.locator("#model").text_content().startswith("Model tiny_model.pt, stage test")
    draw(page, STROKES[digit])
    assert shown_prediction(page) == digit
    # The bars and the 28x28 image the model saw are drawn.
    assert page.locator(".bars li.best").count() == 1
    seen_ink = page.evaluate(
        "Array.from(document.getElementById('seen').getContext('2d')"
        ".getImageData(0, 0, 28, 28).data).filter((v, i) => i % 4 === 0 && v > 128).length"
    )
    assert seen_ink > 20
    page.wait_for_timeout(300)  # let the bars' 0.15 s transition finish before the picture
    page.screenshot(path=str(tmp_path / f"page-{digit}-{width}px.png"), full_page=True)

    page.click("#clear")
    assert page.locator("#digit").text_content() == ""
    page.close()


def _a_photo_the_model_reads(mnist_dir) -> tuple[bytes, int]:
    """The first photo-like test digit the tiny model reads right through `preprocess_image`."""
    model = load_checkpoint(tiny_checkpoint(mnist_dir)).model.eval()
    images, labels = load_split(mnist_dir, train=False)
    rng = np.random.default_rng(0)
    for index in range(50):
        photo = photo_like(images[index].numpy(), index, rng)
        with torch.inference_mode():
            logits = model(normalize(preprocess_image(photo)[None]))
        if index % 10 not in (4, 9) and int(logits.argmax()) == int(labels[index]):
            return photo, int(labels[index])
    raise AssertionError("the tiny model reads none of the first 50 photos")


@pytest.mark.parametrize("width", [900, 390], ids=["wide", "phone"])
def test_an_uploaded_photo_is_predicted(browser, server_url, mnist_dir, tmp_path, width):
    photo, label = _a_photo_the_model_reads(mnist_dir)
    (tmp_path / "photo.jpg").write_bytes(photo)
    page = browser.new_page(viewport={"width": width, "height": 800})
    page.goto(server_url)
    page.set_input_files("#photo", str(tmp_path / "photo.jpg"))
    assert shown_prediction(page) == str(label)
    assert page.locator("#photo").get_attribute("capture") == "environment"
    seen_ink = page.evaluate(
        "Array.from(document.getElementById('seen').getContext('2d')"
        ".getImageData(0, 0, 28, 28).data).filter((v, i) => i % 4 === 0 && v > 128).length"
    )
    assert seen_ink > 20
    # Nothing is wider than the screen: the page is usable on a phone.
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    page.wait_for_timeout(300)
    page.screenshot(path=str(tmp_path / f"photo-{width}px.png"), full_page=True)
    page.close()


def test_the_api_docs_render_with_no_request_leaving_the_server(browser, server_url):
    page = browser.new_page()
    outside = []

    def only_the_server(route):
        if route.request.url.startswith(server_url):
            route.continue_()
        else:  # a CDN, say: this machine may have no internet, so the page must not need one
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_server)
    page.goto(server_url + "docs")
    operations = page.locator(".opblock-summary-path")
    operations.first.wait_for(timeout=15_000)
    assert set(operations.all_text_contents()) >= {"/predict", "/predict/batch", "/model"}
    assert outside == []
    page.close()
