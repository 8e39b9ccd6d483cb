"""Screenshot the VPred panel on a real WebUI page (headless Chromium) for the README.

    bash tools/dev.sh screenshot          # builds/starts the A1111 host when no VPRED_WEBUI_URL is given
    .venv/bin/python tools/screenshot.py --url http://127.0.0.1:7860 --out docs/panel.png

Loads the tiny v-pred checkpoint through the API, opens the txt2img tab, waits until the page has filled in the
panel's header, and saves a PNG of the txt2img settings column with the panel closed (its default state), then opens
the panel and saves ``<out>-open.png`` (status line, controls, schedule preview). The page is driven exactly as in the
browser test tier.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def post(url: str, path: str, body: dict) -> None:
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        response.read()


def shoot(url: str, out: Path, checkpoint: str, chromium: str) -> None:
    """``out``: the txt2img settings column with the panel closed (the default); ``<out>-open.png``: the panel open."""
    opened = out.with_name(f"{out.stem}-open{out.suffix}")
    from playwright.sync_api import sync_playwright

    post(url, "/sdapi/v1/options", {"sd_model_checkpoint": checkpoint})
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, device_scale_factor=1)
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_selector("#script_img2img_vpred_refresh[title]", state="attached", timeout=180_000)
        # The default state: the panel closed, its header filled in on page load (no Refresh needed).
        page.wait_for_function(
            "() => /v-pred/.test((document.querySelector('#script_txt2img_vpred_panel .label-wrap') || {}).innerText"
            " || '')",
            timeout=60_000,
        )
        settings = page.locator("#txt2img_settings")
        settings.scroll_into_view_if_needed()
        out.parent.mkdir(parents=True, exist_ok=True)
        settings.screenshot(path=str(out))
        # The panel opened: status line, controls and schedule preview.
        page.locator("#script_txt2img_vpred_panel .label-wrap").first.click()
        page.wait_for_function(
            "() => /steps/.test((document.querySelector('#script_txt2img_vpred_preview') || {}).innerText || '')",
            timeout=60_000,
        )
        panel = page.locator("#script_txt2img_vpred_panel")
        panel.scroll_into_view_if_needed()
        panel.screenshot(path=str(opened))
        browser.close()
    print(f"wrote {out} and {opened}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=os.environ.get("VPRED_WEBUI_URL", "http://127.0.0.1:7860"))
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "panel.png")
    ap.add_argument("--checkpoint", default=os.environ.get("VPRED_WEBUI_VPRED", "tiny-vpred"))
    ap.add_argument("--chromium", default=os.environ.get("VPRED_CHROMIUM", "/usr/bin/chromium"))
    args = ap.parse_args(argv)
    shoot(args.url.rstrip("/"), args.out, args.checkpoint, args.chromium)
    return 0


if __name__ == "__main__":
    sys.exit(main())
