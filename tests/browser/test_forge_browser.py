"""Browser tier on Forge (gradio 4.40): the same panel in the real Forge page, headless Chromium.

Needs ``VPRED_FORGE_URL`` (started by ``bash tools/dev.sh test``; see ``tests/webui/forge_client.py`` for the skip
rule) and Chromium as the A1111 browser tests do. The v-pred twin is loaded by one small generation first (Forge
loads checkpoints lazily, at the first generation).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

from tests.browser.test_panel_browser import CHROMIUM, CHROMIUM_ARGS, TABS, UI_TIMEOUT_MS, Page
from tests.webui.forge_client import URL, call, require_forge

require_forge()
pytestmark = [pytest.mark.browser]

V = "sd15-v"


@pytest.fixture(scope="module")
def forge_page() -> Iterator[Page]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium or set VPRED_CHROMIUM")
    body = {
        "prompt": "a cat",
        "width": 64,
        "height": 64,
        "steps": 2,
        "sampler_name": "Euler",
        "override_settings": {"sd_model_checkpoint": V},
        "override_settings_restore_afterwards": False,
    }
    status, out = call("/sdapi/v1/txt2img", body)
    assert status == 200, out
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = chromium.new_context(viewport={"width": 1400, "height": 1100})
        page = Page(context.new_page())
        page.page.set_default_timeout(20_000)
        page.page.goto(URL + "/", wait_until="domcontentloaded")
        page.page.wait_for_selector("#script_img2img_vpred_refresh[title]", state="attached", timeout=UI_TIMEOUT_MS)
        yield page
        ours = page.ours()
        context.close()
        chromium.close()
    assert not ours, "JavaScript errors from the extension on Forge:\n" + "\n".join(ours)


def _wait_header(ui: Page, tab: str, pattern: str) -> str:
    ui.page.wait_for_function(
        "([sel, pat]) => { const e = document.querySelector(sel); return !!e && new RegExp(pat).test(e.innerText); }",
        arg=[f"#script_{tab}_vpred_panel .label-wrap", pattern],
        timeout=60_000,
    )
    return ui.header(tab).inner_text()


@pytest.mark.parametrize("tab", TABS)
def test_panel_on_forge_is_closed_and_summarises_the_loaded_v_checkpoint(forge_page: Page, tab: str):
    ui = forge_page
    ui.tab(tab)
    ui.el(tab, "panel").wait_for(state="visible")
    text = _wait_header(ui, tab, r"v-pred \+ ZTSNR")
    assert re.search(r"v-pred \+ ZTSNR · (trailing|exponential) · φ 0\.7", text), text
    assert not ui.el(tab, "prediction").is_visible()  # closed by default
    ui.open(tab)
    status = ui.wait_text(tab, "status", r"v-prediction")
    assert "v-prediction + zero terminal SNR" in status, status
    assert "not supported" not in status
    preview = ui.wait_text(tab, "preview", r"steps")
    assert "ZTSNR" in preview, preview


def test_trailing_schedule_type_and_hints_on_forge(forge_page: Page):
    ui = forge_page
    ui.open("txt2img")
    for item in ("prediction", "ztsnr", "spacing", "cfg_rescale"):
        assert ui.el("txt2img", item).get_attribute("title"), item
    status, schedulers = call("/sdapi/v1/schedulers")
    assert status == 200
    assert "Trailing" in [s["label"] for s in schedulers]
