"""Browser tier: the real WebUI page in headless Chromium (Debian's ``chromium``), driven by Playwright.

Needs the same running WebUI as the live tier (``VPRED_WEBUI_URL``, started by ``bash tools/dev.sh test``) and a
Chromium binary (``VPRED_CHROMIUM``, default ``/usr/bin/chromium``); Playwright never downloads a browser here.
The tests load the tiny v-pred checkpoint through the API (as a user or a script would), use the page as a user
does (clicks, typing, hover), and restore the WebUI's options at the end.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from lib_vpred import params as vp
from tests.webui.test_live import EPS, SKIP_REASON, URL, VPRED, call

CHROMIUM = os.environ.get("VPRED_CHROMIUM", "/usr/bin/chromium")
#: Flags for a closed network (no background requests) and a root user in a container.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TABS = ("txt2img", "img2img")
ITEMS = ("panel", "enabled", "prediction", "ztsnr", "spacing", "cfg_rescale", "refresh")
UI_TIMEOUT_MS = 180_000
GENERATE_TIMEOUT_MS = 300_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not URL, reason=SKIP_REASON),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium or set VPRED_CHROMIUM")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def vpred_checkpoint() -> Iterator[None]:
    """The tiny v-pred checkpoint as the WebUI's loaded model for this module, then the eps one again."""
    status, out = call("/sdapi/v1/options", {"sd_model_checkpoint": VPRED})
    assert status == 200, out
    yield
    call("/sdapi/v1/options", {"sd_model_checkpoint": EPS})


class Page:
    """One browser tab on the WebUI, with the console errors it collected."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on(
            "console", lambda m: self.errors.append(f"console: {m.text} @ {m.location}") if m.type == "error" else None
        )
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}\n{getattr(e, 'stack', '')}"))
        page.on("response", lambda r: self.errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)

    def el(self, tab: str, item: str) -> Any:
        return self.page.locator(f"#script_{tab}_vpred_{item}")

    def text(self, tab: str, item: str) -> str:
        # gradio's HTML component repeats its elem_id on an inner element: read the outer one
        return self.el(tab, item).first.inner_text()

    def wait_text(self, tab: str, item: str, pattern: str) -> str:
        """Wait until the status/preview text matches ``pattern`` (the panel updates asynchronously)."""
        selector = f"#script_{tab}_vpred_{item}"
        try:
            self.page.wait_for_function(
                "([sel, pat]) => { const e = document.querySelector(sel); return !!e && new RegExp(pat).test(e.innerText); }",
                arg=[selector, pattern],
                timeout=30_000,
            )
        except Exception as e:
            raise AssertionError(f"{tab} {item} never matched {pattern!r}; it says:\n{self.text(tab, item)}") from e
        return self.text(tab, item)

    def radio(self, tab: str, item: str, choice: str) -> None:
        self.el(tab, item).locator("label", has_text=re.compile(rf"^\s*{re.escape(choice)}\s*$")).click()

    def radio_value(self, tab: str, item: str) -> str:
        return self.el(tab, item).locator("input:checked").get_attribute("value") or ""

    def set_number(self, selector: str, value: float) -> None:
        box = self.page.locator(f"{selector} input[type=number]")
        box.fill(str(value))
        box.press("Enter")
        box.blur()

    def number(self, selector: str) -> float:
        return float(self.page.locator(f"{selector} input[type=number]").input_value())

    def dropdown(self, root: str, choice: str) -> None:
        """Pick ``choice`` in the gradio dropdown under the CSS selector ``root``, as a user does."""
        self.page.locator(f"{root} input").click()
        self.page.locator(f"{root} ul.options li[data-value={json.dumps(choice)}]").click()

    def dropdown_choices(self, root: str) -> list[str]:
        self.page.locator(f"{root} input").click()
        options = self.page.locator(f"{root} ul.options li")
        options.first.wait_for()
        choices = [options.nth(i).get_attribute("data-value") or "" for i in range(options.count())]
        self.page.keyboard.press("Escape")
        return choices

    def tab(self, name: str) -> None:
        self.page.locator("#tabs > .tab-nav button", has_text=re.compile(rf"^\s*{name}\s*$", re.IGNORECASE)).click()

    def header(self, tab: str) -> Any:
        """The panel accordion's header (its label)."""
        return self.el(tab, "panel").locator(".label-wrap").first

    def open(self, tab: str) -> None:
        """Switch to ``tab`` and open its panel (closed by default) when it is not open yet."""
        self.tab(tab)
        self.header(tab).wait_for(state="visible")
        if not self.el(tab, "prediction").is_visible():
            self.header(tab).click()
        self.el(tab, "prediction").wait_for(state="visible")

    def checked(self, tab: str, item: str) -> bool:
        return self.el(tab, item).locator("input[type=checkbox]").is_checked()

    def ours(self) -> list[str]:
        """Errors that come from this extension (its files, its element ids, its name)."""
        return [e for e in self.errors if re.search(r"vpred|sd-webui-vpred", e, re.IGNORECASE)]


@pytest.fixture
def ui(browser: Any, vpred_checkpoint: None) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = Page(context.new_page())
    page.page.set_default_timeout(20_000)
    page.page.goto(URL + "/", wait_until="domcontentloaded")
    # the hints script runs from onUiLoaded: once the last control has its title, the page is fully up
    page.page.wait_for_selector("#script_img2img_vpred_refresh[title]", state="attached", timeout=UI_TIMEOUT_MS)
    yield page
    ours = page.ours()
    context.close()
    assert not ours, "JavaScript errors from the extension:\n" + "\n".join(ours)


def refresh(ui: Page, tab: str) -> tuple[str, str]:
    ui.open(tab)
    ui.el(tab, "refresh").click()
    return ui.wait_text(tab, "status", VPRED), ui.wait_text(tab, "preview", r"steps")


# --- the panel -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tab", TABS)
def test_panel_is_in_the_tab_and_expands_and_collapses(ui: Page, tab: str):
    ui.tab(tab)
    panel = ui.el(tab, "panel")
    panel.wait_for(state="visible")
    assert "V-Prediction" in ui.header(tab).inner_text()
    assert not ui.el(tab, "prediction").is_visible()  # closed by default: the page stays short
    ui.header(tab).click()
    ui.el(tab, "prediction").wait_for(state="visible")
    ui.header(tab).click()
    ui.el(tab, "prediction").wait_for(state="hidden")


@pytest.mark.parametrize("tab", TABS)
def test_closed_panel_is_short_and_its_header_says_what_will_happen(ui: Page, tab: str):
    """Finding 1: the default state is a one-line header that summarises what the next generation does (computed on
    page load for the loaded v-pred checkpoint), not a 233 px panel."""
    ui.tab(tab)
    header = ui.header(tab)
    header.wait_for(state="visible")
    ui.page.wait_for_function(
        "(sel) => { const e = document.querySelector(sel); return !!e && /v-pred \\+ ZTSNR/.test(e.innerText); }",
        arg=f"#script_{tab}_vpred_panel .label-wrap",
        timeout=30_000,
    )
    text = header.inner_text()
    # Timestep spacing Auto: exponential for the WebUI's default sampler DPM++ 2M, trailing for most others
    assert re.search(r"v-pred \+ ZTSNR · (trailing|exponential) · φ 0\.7", text), text
    box = ui.el(tab, "panel").bounding_box()
    assert box is not None
    assert box["height"] < 80, box


@pytest.mark.parametrize("tab", TABS)
def test_collapsing_the_panel_never_turns_it_off(ui: Page, tab: str):
    """Finding 1: folding the panel away only hides it; the Enable checkbox inside is the switch."""
    ui.open(tab)
    assert ui.checked(tab, "enabled")
    ui.header(tab).click()  # collapse
    ui.el(tab, "prediction").wait_for(state="hidden")
    assert ui.checked(tab, "enabled")
    assert "off" not in ui.header(tab).inner_text().split(":", 1)[-1]
    if tab == "txt2img":
        text = generate_small(ui, tab)
        assert "VPred: disabled" not in text, text
        assert "VPred prediction: v-prediction (auto)" in text, text
    # the checkbox is the switch: unticking it says so in the header, and the panel may stay open or closed
    ui.open(tab)
    ui.el(tab, "enabled").locator("input[type=checkbox]").uncheck()
    ui.page.wait_for_function(
        "(sel) => { const e = document.querySelector(sel); return !!e && /ZTSNR: off\\b/.test(e.innerText); }",
        arg=f"#script_{tab}_vpred_panel .label-wrap",
        timeout=30_000,
    )


@pytest.mark.parametrize("tab", TABS)
def test_every_control_has_its_hover_hint(ui: Page, tab: str):
    ui.open(tab)
    expected = {p.name: p.help for p in vp.PARAMS}
    for item in ITEMS:
        el = ui.el(tab, item)
        target = ui.header(tab) if item == "panel" else el
        title = target.get_attribute("title")
        assert title, f"{tab} {item}: no hover hint"
        if item in expected:
            assert title == expected[item], item
        # finding 6: plain words, what to pick and when; the paper's language stays in the README
        assert not re.search(r"Algorithm|paper|Table \d|std\b", title), (item, title)
        # the browser shows the title on hover: hovering must not throw and the element must be hoverable
        target.hover()


# --- finding 3: computed on page load and on checkpoint change, Refresh optional ----------------------------------


@pytest.mark.parametrize("tab", TABS)
def test_status_and_preview_are_computed_on_page_load(ui: Page, tab: str):
    ui.tab(tab)
    status = ui.wait_text(tab, "status", VPRED)
    preview = ui.wait_text(tab, "preview", r"steps")
    assert "Refresh" not in status
    assert "Refresh" not in preview
    assert "v-prediction + zero terminal SNR" in status, status


def _checkpoint_title(name: str) -> str:
    status, models = call("/sdapi/v1/sd-models")
    assert status == 200, models
    return next(m["title"] for m in models if m["model_name"] == name)


def test_status_follows_a_checkpoint_change_by_api_and_by_the_dropdown(ui: Page):
    """The WebUI's checkpoint dropdown and a model loaded through the API both update the panel (no Refresh)."""
    tab = "txt2img"
    ui.wait_text(tab, "status", VPRED)
    try:
        # the WebUI's checkpoint dropdown (it shows the v-pred checkpoint the page was loaded with)
        ui.dropdown("#setting_sd_model_checkpoint", _checkpoint_title(EPS))
        status_text = ui.wait_text(tab, "status", rf"{EPS}\S*: eps checkpoint")
        assert VPRED not in status_text
        ui.wait_text("img2img", "status", rf"{EPS}\S*: eps checkpoint")
        assert "eps checkpoint" in ui.header(tab).inner_text()
        # a model loaded through the API (the page is not told; it notices)
        status, out = call("/sdapi/v1/options", {"sd_model_checkpoint": VPRED})
        assert status == 200, out
        ui.wait_text(tab, "status", rf"{VPRED}\S*: v-prediction")
        ui.wait_text("img2img", "status", rf"{VPRED}\S*: v-prediction")
        assert re.search(r"v-pred \+ ZTSNR", ui.header(tab).inner_text())
    finally:
        call("/sdapi/v1/options", {"sd_model_checkpoint": VPRED})


def test_status_and_preview_follow_the_controls_and_the_webui(ui: Page):
    tab = "txt2img"
    status, preview = refresh(ui, tab)
    assert "v-prediction + zero terminal SNR" in status, status
    assert re.search(r"(trailing|exponential) \(VPred\)", preview), preview
    # the WebUI's steps
    ui.set_number("#txt2img_steps", 10)
    preview = ui.wait_text(tab, "preview", r"\b10 steps")
    assert re.search(r"\b999\b", preview), preview
    # our spacing: schedule type as selected
    ui.radio(tab, "spacing", "Schedule type")
    preview = ui.wait_text(tab, "preview", r"schedule type")
    assert "trailing (VPred)" not in preview
    # the WebUI's schedule type
    ui.dropdown("#txt2img_scheduler", "Uniform")
    ui.wait_text(tab, "preview", r"schedule type Uniform")
    # the WebUI's sampler
    ui.dropdown("#txt2img_sampling", "Euler")
    ui.wait_text(tab, "preview", r"txt2img, Euler,")
    # ZTSNR off: the stock table
    ui.radio(tab, "ztsnr", "Off")
    preview = ui.wait_text(tab, "preview", r"stock sigmas")
    ui.wait_text(tab, "status", r"v-prediction, steps from the Schedule type")
    # phi
    ui.set_number(f"#script_{tab}_vpred_cfg_rescale", 0.25)
    ui.wait_text(tab, "status", r"CFG rescale 0\.25")
    # prediction eps on this v checkpoint
    ui.radio(tab, "prediction", "eps")
    ui.wait_text(tab, "status", r"v-pred checkpoint sampled as eps")


def test_img2img_preview_follows_denoising_strength(ui: Page):
    ui.tab("img2img")
    tab = "img2img"
    refresh(ui, tab)
    ui.set_number("#img2img_steps", 20)
    ui.set_number("#img2img_denoising_strength", 0.5)
    preview = ui.wait_text(tab, "preview", r"strength 0\.5")
    assert "img2img" in preview
    ui.set_number("#img2img_denoising_strength", 0.9)
    ui.wait_text(tab, "preview", r"strength 0\.9")


# --- finding 5: one short status line, true for its tab; the preview shows every sampler's real schedule -------


def t_cells(ui: Page, tab: str) -> list[str]:
    return (
        ui.el(tab, "preview")
        .first.locator("tr", has=ui.page.locator("th", has_text="t"))
        .last.locator("td")
        .all_inner_texts()
    )


def test_status_is_one_short_line_true_for_img2img(ui: Page):
    ui.open("img2img")
    ui.set_number("#img2img_steps", 20)
    ui.set_number("#img2img_denoising_strength", 0.5)
    preview = ui.wait_text("img2img", "preview", r"strength 0\.5")
    assert "starting at t=549" in preview, preview
    status = ui.text("img2img", "status")
    assert "t=999" not in status, status
    assert "first step" not in status, status
    assert "strength" not in status
    assert "\n" not in status.strip(), status
    # the why is the hover text
    assert "YAML" in (ui.el("img2img", "status").locator("p").first.get_attribute("title") or "")
    ui.tab("txt2img")
    txt = ui.wait_text("txt2img", "status", VPRED)
    assert "strength" not in txt, txt
    assert "t=999" not in txt, txt


def test_preview_says_when_trailing_replaces_the_schedule_type(ui: Page):
    tab = "txt2img"
    ui.open(tab)
    ui.dropdown("#txt2img_sampling", "Euler")
    ui.dropdown("#txt2img_scheduler", "Karras")
    preview = ui.wait_text(tab, "preview", r"Karras")
    assert "replacing the selected Schedule type Karras" in preview, preview


def test_auto_spacing_follows_the_tabs_sampler(ui: Page):
    """Timestep spacing: Auto is the default; with DPM++ 2M the preview, status and header say exponential (from
    t = 999), with Euler trailing; Trailing forces trailing for DPM++ 2M too."""
    tab = "txt2img"
    ui.open(tab)
    assert ui.radio_value(tab, "spacing") == "Auto"
    ui.set_number("#txt2img_steps", 20)
    ui.dropdown("#txt2img_sampling", "DPM++ 2M")
    preview = ui.wait_text(tab, "preview", r"DPM\+\+ 2M, exponential \(VPred\)")
    assert re.search(r"\b999\b", preview), preview
    assert "exponential steps from pure noise" in ui.wait_text(tab, "status", r"exponential")
    ui.page.wait_for_function(
        "(sel) => /· exponential ·/.test(document.querySelector(sel).innerText)",
        arg=f"#script_{tab}_vpred_panel .label-wrap",
        timeout=30_000,
    )
    ui.dropdown("#txt2img_sampling", "Euler")
    ui.wait_text(tab, "preview", r"Euler, trailing \(VPred\)")
    ui.wait_text(tab, "status", r"trailing steps")
    ui.dropdown("#txt2img_sampling", "DPM++ 2M")
    ui.radio(tab, "spacing", "Trailing")
    ui.wait_text(tab, "preview", r"DPM\+\+ 2M, trailing \(VPred\)")
    ui.radio(tab, "spacing", "Auto")


def test_preview_warnings_follow_the_readme_rule_and_t_is_whole(ui: Page):
    """README: Karras under ZTSNR loses detail with Euler (warning), is fine with DPM++ samplers (no warning)."""
    tab = "txt2img"
    ui.open(tab)
    ui.set_number("#txt2img_steps", 20)
    ui.radio(tab, "spacing", "Schedule type")
    ui.dropdown("#txt2img_sampling", "Euler")
    ui.dropdown("#txt2img_scheduler", "Karras")
    preview = ui.wait_text(tab, "preview", r"Euler, schedule type Karras")
    assert "⚠" in preview, preview
    cells = [c for c in t_cells(ui, tab) if c != "…"]
    assert cells
    assert all(re.fullmatch(r"\d+", c) for c in cells), cells  # 999, 999, 998 ... never 997.7
    ui.dropdown("#txt2img_sampling", "DPM++ 2M")
    preview = ui.wait_text(tab, "preview", r"DPM\+\+ 2M, schedule type Karras")
    assert "⚠" not in preview, preview


@pytest.mark.parametrize(
    ("sampler", "first", "count"),
    [("DDIM", "999", "10 steps"), ("PLMS", "999", "10 model calls"), ("UniPC", "999", "10 steps")],
)
def test_preview_shows_timestep_samplers_timesteps(ui: Page, sampler: str, first: str, count: str):
    tab = "txt2img"
    ui.open(tab)
    ui.set_number("#txt2img_steps", 10)
    ui.dropdown("#txt2img_sampling", sampler)
    preview = ui.wait_text(tab, "preview", rf"txt2img, {re.escape(sampler)},")
    assert "covers k-diffusion samplers only" not in preview
    cells = t_cells(ui, tab)
    assert cells[0] == first, (cells, preview)
    assert count in preview, preview


def test_article_before_the_step_count(ui: Page):
    ui.open("img2img")
    ui.set_number("#img2img_steps", 8)
    ui.set_number("#img2img_denoising_strength", 0.5)
    preview = ui.wait_text("img2img", "preview", r"strength 0\.5")
    assert "of an 8-step schedule" in preview, preview


# --- finding 4: an explicit override is recorded -----------------------------------------------------------------


def test_prediction_eps_on_a_v_checkpoint_is_recorded_and_pasting_reproduces_it(ui: Page):
    tab = "txt2img"
    ui.open(tab)
    ui.radio(tab, "prediction", "eps")
    status = ui.wait_text(tab, "status", r"sampled as eps")
    assert "eps checkpoint" not in status.replace("checkpoint sampled as eps", ""), status
    text = generate_small(ui, tab)
    assert "VPred prediction: eps" in text, text
    ui.radio(tab, "prediction", "Auto")
    paste(ui, tab, text)
    ui.page.wait_for_function(
        "() => { const e = document.querySelector('#script_txt2img_vpred_prediction input:checked');"
        " return !!e && e.value === 'eps'; }",
        timeout=30_000,
    )


# --- generation, infotext, paste, send-to ----------------------------------------------------------------------------


def generate_small(ui: Page, tab: str = "txt2img") -> str:
    """Generate a 64x64, 4-step image from the page; returns the infotext shown under it."""
    ui.page.locator(f"#{tab}_prompt textarea").fill("a small test image")
    ui.set_number(f"#{tab}_width", 64)
    ui.set_number(f"#{tab}_height", 64)
    ui.set_number(f"#{tab}_steps", 4)
    ui.dropdown(f"#{tab}_sampling", "Euler")
    ui.page.locator(f"#{tab}_generate").click()
    info = ui.page.locator(f"#html_info_{tab}").first
    ui.page.wait_for_function(
        "(sel) => { const e = document.querySelector(sel); return !!e && /Steps: 4/.test(e.innerText); }",
        arg=f"#html_info_{tab}",
        timeout=GENERATE_TIMEOUT_MS,
    )
    assert ui.page.locator(f"#{tab}_gallery img").count() >= 1
    return info.inner_text()


def test_generate_writes_every_vpred_key_and_send_to_img2img_keeps_the_controls(ui: Page):
    tab = "txt2img"
    ui.open(tab)
    ui.radio(tab, "prediction", "v-prediction")
    ui.radio(tab, "ztsnr", "On")
    ui.radio(tab, "spacing", "Schedule type")
    ui.set_number(f"#script_{tab}_vpred_cfg_rescale", 0.4)
    text = generate_small(ui, tab)
    # every key of an active pass (the master key "VPred" is written only as "VPred: disabled")
    for key in sorted(vp.INFOTEXT_KEYS - {vp.PARAMS_BY_NAME["enabled"].infotext_key, vp.HIRES_SPACING_KEY}):
        assert re.search(rf"(^|, ){re.escape(key)}: ", text), (key, text)
    assert "VPred CFG rescale: 0.4" in text
    # Send to img2img: the img2img panel takes the same values
    ui.page.locator("#txt2img_send_to_img2img").click()
    ui.open("img2img")
    ui.page.wait_for_function(
        "() => { const e = document.querySelector('#script_img2img_vpred_cfg_rescale input[type=number]');"
        " return !!e && parseFloat(e.value) === 0.4; }",
        timeout=30_000,
    )
    assert ui.radio_value("img2img", "prediction") == "v-prediction"
    assert ui.radio_value("img2img", "ztsnr") == "On"
    assert ui.radio_value("img2img", "spacing") == "Schedule type"


def paste(ui: Page, tab: str, infotext: str) -> None:
    ui.page.locator(f"#{tab}_prompt textarea").fill(infotext)
    ui.page.locator(f"#tab_{tab} #paste").click()


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            "VPred prediction: v-prediction, VPred ZTSNR: off, VPred spacing: schedule type, VPred CFG rescale: 0.35",
            {"prediction": "v-prediction", "ztsnr": "Off", "spacing": "Schedule type", "cfg_rescale": 0.35},
        ),
        # the legacy keys of the CFG_Rescale_webui extension
        ("CFG Rescale phi: 0.3", {"cfg_rescale": 0.3}),
        ("CFG Rescale: 0.55", {"cfg_rescale": 0.55}),
    ],
    ids=["ours", "legacy-phi", "legacy"],
)
def test_paste_restores_the_controls(ui: Page, lines: str, expected: dict[str, Any]):
    tab = "txt2img"
    ui.open(tab)
    ui.set_number(f"#script_{tab}_vpred_cfg_rescale", 0.9)
    paste(ui, tab, f"a cat\nSteps: 5, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, {lines}")
    want = expected["cfg_rescale"]
    ui.page.wait_for_function(
        "(want) => { const e = document.querySelector('#script_txt2img_vpred_cfg_rescale input[type=number]');"
        " return !!e && Math.abs(parseFloat(e.value) - want) < 1e-9; }",
        arg=want,
        timeout=30_000,
    )
    for item in ("prediction", "ztsnr", "spacing"):
        if item in expected:
            assert ui.radio_value(tab, item) == expected[item], item
    assert ui.number("#txt2img_steps") == 5


# --- WebUI integration: Settings, XYZ, schedule type ----------------------------------------------------------------


def test_settings_section_xyz_axes_and_trailing_schedule_type(ui: Page):
    assert "Trailing" in ui.dropdown_choices("#txt2img_scheduler")
    # XYZ: choose the script, then an axis type
    ui.dropdown("#tab_txt2img #script_list", "X/Y/Z plot")
    axis = ui.page.locator("#script_txt2img_xyz_plot_x_type")
    axis.wait_for(state="visible")
    choices = ui.dropdown_choices("#script_txt2img_xyz_plot_x_type")
    ours = [c for c in choices if c.startswith("[VPred]")]
    assert len(ours) == len(vp.PARAMS), choices
    # Settings: the section and each of its options
    ui.page.locator("#tabs > .tab-nav button", has_text="Settings").click()
    ui.page.locator("#settings .tab-nav button", has_text=re.compile("V-Pred", re.IGNORECASE)).first.click()
    for name in ("default_enabled", "default_prediction", "default_ztsnr", "default_spacing", "default_cfg_rescale"):
        ui.page.locator(f"#setting_vpred_{name}").wait_for(state="visible")
        # finding 6: read when the UI is built, so marked the way the WebUI marks such settings
        assert "(requires Reload UI)" in ui.page.locator(f"#setting_vpred_{name}").inner_text(), name
    # finding 6: searching Settings for "ztsnr" finds every one of the 7 options
    ui.page.locator("#settings_search input").fill("ztsnr")
    ui.page.wait_for_timeout(1000)  # the WebUI filters 250 ms after typing
    found = ui.page.locator("[id^=setting_vpred_]:visible")
    assert found.count() == 7, found.count()


def test_api_config_lists_the_panel_components():
    """The page's own component config (what the browser renders) carries the panel in both tabs."""
    status, config = call("/config")
    assert status == 200
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    for tab in TABS:
        for item in ("enabled", "prediction", "ztsnr", "spacing", "cfg_rescale", "status", "preview"):
            assert f"script_{tab}_vpred_{item}" in ids, (tab, item)
    assert json.dumps(config)  # serialisable as the page receives it
