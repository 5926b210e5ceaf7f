"""A screenshot of `dalle serve`'s page with real generated images, for the README.

Starts `dalle serve` on a free loopback port with the given model folders, types a
prompt into the page in headless Chromium (Debian's), waits for the images, and saves
full-page screenshots at a laptop's and a phone's width.

    python benchmarks/serve_screenshot.py --model outputs/demo/dalle --clip outputs/demo/clip \\
        --out benchmarks/results/serve-cpu-2026-11-23/page.png
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--clip", type=Path)
    parser.add_argument("--prompt", default="a small red star above a large blue circle")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--keep", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out_dir = Path(tempfile.mkdtemp())
    command = [sys.executable, "-m", "dalle", "serve", "--model", str(args.model),
               "--port", str(port), "--out-dir", str(out_dir), "--device", "cpu"]  # fmt: skip
    if args.clip:
        command += ["--clip", str(args.clip)]
    server = subprocess.Popen(command)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        shoot(base, args)
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0


def shoot(base: str, args: argparse.Namespace) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.goto(base)
        page.wait_for_function("() => !document.getElementById('model').textContent.includes('…')")
        page.fill("#prompt", args.prompt)
        page.click("#settings summary")
        page.fill("#num_images", str(args.images))
        page.fill("#keep", str(args.keep))
        page.fill("#seed", str(args.seed))
        page.press("#prompt", "Enter")
        page.wait_for_function(
            "() => document.getElementById('status').textContent.startsWith('done') && "
            "[...document.querySelectorAll('#images img')].every(i => i.naturalWidth > 0)",
            timeout=300_000,
        )
        page.screenshot(path=str(args.out), full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(args.out.with_name(args.out.stem + "-phone.png")), full_page=True)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
