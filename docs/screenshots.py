"""Take the README's two screenshots from a real run: the live training display and TensorBoard.

    python docs/screenshots.py            # writes docs/live_display.png and docs/tensorboard.png

Trains a short run (2 epochs on 12,000 images, batch 32) under tmux, so the display is drawn on
a real terminal, captures the pane while epoch 2 is running, and renders it (Rich's SVG export,
then headless Chromium). Then starts TensorBoard on 127.0.0.1 over that run and screenshots its
scalars. Needs tmux and Chromium (/usr/bin/chromium); takes a few minutes on a small CPU.
"""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageChops
from playwright.sync_api import sync_playwright
from rich.console import Console
from rich.text import Text

DOCS = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
SESSION = "mnist-screenshot"
TMUX = ["tmux", "-L", SESSION]  # a server of its own, away from any other tmux sessions
COLUMNS, ROWS = 150, 24
TENSORBOARD_PORT = 6006
TRAIN_ARGUMENTS = [
    "train",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--max-train-images",
    "12000",
    "--device",
    "cpu",
    "--name",
    "screenshot",
]


def _pane(escapes: bool = False) -> str:
    command = [*TMUX, "capture-pane", "-p", "-t", SESSION] + (["-e"] if escapes else [])
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"error: timed out waiting for {what}")
        time.sleep(0.5)


def capture_live_display(runs_dir: Path) -> str:
    """The pane, with its colours, while epoch 2's bar is running."""
    command = " ".join(
        shlex.quote(part)
        for part in [sys.executable, "-m", "mnist_classifier", *TRAIN_ARGUMENTS]
        + ["--runs-dir", str(runs_dir)]
    )
    # The training command sees this environment (PYTHONPATH included) through `env`.
    environment = " ".join(
        f"{name}={shlex.quote(os.environ[name])}"
        for name in ("PATH", "PYTHONPATH")
        if name in os.environ
    )
    subprocess.run(
        [*TMUX, "new-session", "-d", "-s", SESSION, "-x", str(COLUMNS), "-y", str(ROWS)]
        + [f"env {environment} TERM=xterm-256color {command}; sleep 600"],
        check=True,
    )
    try:
        _wait_for(lambda: "Epoch 2/2 " in _pane() and " 0/" not in _pane(), 900, "epoch 2")
        time.sleep(3)  # a few refreshes into the epoch
        captured = _pane(escapes=True)
        _wait_for(lambda: "Next:" in _pane(), 900, "the end of training")
    finally:
        subprocess.run([*TMUX, "kill-server"], check=False)
    return captured


def render_terminal(captured: str, browser, output: Path) -> None:
    console = Console(record=True, width=COLUMNS, file=io.StringIO(), force_terminal=True)
    text = Text.from_ansi(captured.rstrip("\n"))
    console.print(text, soft_wrap=True)
    with tempfile.TemporaryDirectory() as folder:
        svg = Path(folder) / "terminal.svg"
        console.save_svg(str(svg), title="mnist train")
        page = browser.new_page(viewport={"width": 1400, "height": 700})
        page.goto(svg.as_uri())
        page.locator("svg").screenshot(path=str(output))
        page.close()
    # Rich's SVG sits in a white margin: keep only the terminal window.
    with Image.open(output) as image:
        white = Image.new(image.mode, image.size, (255,) * len(image.getbands()))
        image.crop(ImageChops.difference(image, white).getbbox()).save(output)


def screenshot_tensorboard(runs_dir: Path, browser, output: Path) -> None:
    server = subprocess.Popen(
        [
            Path(sys.executable).with_name("tensorboard"),
            "--logdir",
            str(runs_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(TENSORBOARD_PORT),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        url = f"http://127.0.0.1:{TENSORBOARD_PORT}/?pinnedCards=&tagFilter=train%7Clearning_rate#timeseries"
        _wait_for(lambda: _answers(page, url), 120, "TensorBoard")
        page.wait_for_selector("text=train/batch_loss", timeout=60_000)
        time.sleep(5)  # let the charts draw
        page.screenshot(path=str(output))
        page.close()
    finally:
        server.terminate()
        server.wait()


def _answers(page, url: str) -> bool:
    try:
        page.goto(url, timeout=5_000)
        return True
    except Exception:  # not listening yet
        return False


def shrink(path: Path) -> None:
    """64 colours are plenty for a terminal and a chart, at a third of the bytes."""
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=64)
    small.save(path, optimize=True)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        runs_dir = Path(folder) / "runs"
        captured = capture_live_display(runs_dir)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox"], headless=True
            )
            render_terminal(captured, browser, DOCS / "live_display.png")
            screenshot_tensorboard(runs_dir, browser, DOCS / "tensorboard.png")
            browser.close()
    for picture in ("live_display.png", "tensorboard.png"):
        shrink(DOCS / picture)
    print(f"wrote {DOCS / 'live_display.png'} and {DOCS / 'tensorboard.png'}")


if __name__ == "__main__":
    main()
