"""The panel in both tabs: built by the WebUI's script runner (real gradio 3.41), side-effect free, its status line
and its schedule preview, wired to the WebUI's own steps / sampler / schedule type / denoising strength components
whether those are created before or after the panel.

Expected schedules are recomputed here from the WebUI's formulas (k-diffusion ``get_sigmas_karras``, the trailing
timesteps, ``setup_img2img_steps`` slicing), not taken from ``lib_vpred.preview``.
"""

from __future__ import annotations

import re
import sys

import gradio as gr
import k_diffusion.sampling
import pytest
import torch

from tests.glue.test_support import EPS_SD1, V_SD1, new_webui

pytestmark = pytest.mark.glue


def _script(w, is_img2img):
    return w.runners[is_img2img].alwayson_scripts[0]


def _ztsnr_sigmas() -> torch.Tensor:
    """Algorithm 1 on the SD scaled-linear schedule, last alpha-bar clamped as in the WebUI (independent of lib_vpred)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    s = abar.sqrt()
    s = (s - s[-1]) * s[0] / (s[0] - s[-1])
    a = s * s
    a[-1] = 4.8973451890853435e-08
    return ((1 - a) / a).sqrt()


def _first_row(html_text: str, name: str) -> list[str]:
    row = re.search(rf"<tr><th>{name}</th>(.*?)</tr>", html_text)
    assert row, html_text
    return re.findall(r"<td>(.*?)</td>", row.group(1))


def _tab(w, is_img2img, *, before=(), after=()):
    """Build one tab the way the WebUI does: WebUI components ``before`` the scripts area, our panel, components
    ``after``; every component goes through ``after_component`` of the tab's scripts (gradio_extensons.py)."""
    scripts = sys.modules["modules.scripts"]
    runner = scripts.ScriptRunner(is_img2img)
    script = runner.add_script(w.script_module.VPredScript, "scripts/vpred.py")
    created = {}

    def make(spec):
        kind, elem_id, kwargs = spec
        component = kind(elem_id=elem_id, **kwargs)
        created[elem_id] = component
        script.after_component(component, elem_id=elem_id)

    with gr.Blocks() as blocks:
        for spec in before:
            make(spec)
        runner.setup_ui()
        for spec in after:
            make(spec)
    return blocks, script, runner, created


def _listener(blocks, component):
    """The function gradio runs when ``component`` changes (the wired preview listener)."""
    found = [
        (dep, fn)
        for dep, fn in zip(blocks.dependencies, blocks.fns, strict=True)
        if component._id in dep["targets"] and dep["trigger"] == "change" and fn.fn is not None
    ]
    assert len(found) == 1, f"expected one change listener on {component.elem_id}, got {len(found)}"
    return found[0][1].fn


def _controls(script):
    return [c.value for c in script.vpred_controls]


STEPS = (gr.Slider, "txt2img_steps", {"minimum": 1, "maximum": 150, "step": 1, "value": 20})
SAMPLER = (gr.Radio, "txt2img_sampling", {"choices": ["Euler", "DPM++ 2M"], "value": "Euler"})
SCHEDULER = (gr.Dropdown, "txt2img_scheduler", {"choices": ["Automatic", "Karras", "Simple"], "value": "Automatic"})
I2I_DENOISE = (gr.Slider, "img2img_denoising_strength", {"minimum": 0, "maximum": 1, "value": 0.75})


def test_panel_builds_in_both_tabs_with_namespaced_ids(make_webui):
    w = new_webui(make_webui)
    for is_img2img, tab in ((False, "txt2img"), (True, "img2img")):
        script = _script(w, is_img2img)
        ids = [c.elem_id for c in script.vpred_controls]
        assert ids == [f"script_{tab}_vpred_{n}" for n in ("enabled", "prediction", "ztsnr", "spacing", "cfg_rescale")]
        # a closed accordion whose open state is not an input: collapsing it never turns the extension off
        assert isinstance(script.vpred_accordion, gr.Accordion)
        assert script.vpred_accordion.open is False
        assert script.vpred_accordion.elem_id == f"script_{tab}_vpred_panel"
        assert isinstance(script.vpred_controls[0], gr.Checkbox)
        assert script.vpred_controls[0].label == "Enable"
        assert script.vpred_preview.elem_id == f"script_{tab}_vpred_preview"
        assert script.vpred_status.elem_id == f"script_{tab}_vpred_status"
        assert script.args_to - script.args_from == 5


def test_ui_twice_is_side_effect_free(make_webui):
    """The API calls ui() again (twice) inside a throwaway gr.Blocks to read defaults: same values, no wiring of the
    real UI's components into the throwaway Blocks, the real panel's links intact."""
    w = new_webui(make_webui)
    blocks, script, runner, created = _tab(w, False, before=[STEPS])
    first = [c.value for c in runner.inputs[1:]]
    real_panel = script._vpred_links.panel
    real_fns = len(blocks.fns)
    for _ in range(2):
        with gr.Blocks() as throwaway:
            again = script.ui(False)
        assert [c.value for c in again] == first
        assert all(created["txt2img_steps"]._id not in d["targets"] for d in throwaway.dependencies)
    assert len(blocks.fns) == real_fns
    assert real_panel.webui == {"steps": created["txt2img_steps"]}


@pytest.mark.parametrize("order", ["before", "after"])
def test_preview_follows_steps_and_scheduler(make_webui, order):
    w = new_webui(make_webui, models=(V_SD1,))
    specs = [STEPS, SAMPLER, SCHEDULER]
    blocks, script, _runner, created = _tab(w, False, **{order: specs})
    controls = _controls(script)  # defaults: enabled, Auto, Auto, Auto, 0.7 (Euler: trailing)

    on_steps = _listener(blocks, created["txt2img_steps"])
    state, status, preview, header = on_steps(20, {}, *controls)
    assert state == {"steps": 20}
    assert "v-prediction + zero terminal SNR, trailing steps, CFG rescale 0.7" in status
    assert header["label"] == "V-Prediction / ZTSNR: v-pred + ZTSNR · trailing · φ 0.7"
    ztsnr = _ztsnr_sigmas()
    # trailing (VPred's default spacing): t = 999, 949, ... for 20 steps
    assert _first_row(preview, "t")[:3] == ["999", "949", "899"]
    assert _first_row(preview, "sigma")[:2] == [f"{float(ztsnr[999]):.1f}", f"{float(ztsnr[949]):.3g}"]
    assert "20 steps, first at t=999 (sigma 4518.8)" in preview

    state, _status, preview, _header = on_steps(10, state, *controls)
    assert "10 steps" in preview
    assert _first_row(preview, "t")[:3] == ["999", "899", "799"]

    # Schedule type Karras with spacing "Schedule type": the WebUI's Karras on the ZTSNR table, and a warning
    on_scheduler = _listener(blocks, created["txt2img_scheduler"])
    controls[3] = "Schedule type"
    state, _status, preview, _header = on_scheduler("Karras", state, *controls)
    assert state == {"steps": 10, "scheduler": "Karras"}
    expected = k_diffusion.sampling.get_sigmas_karras(10, float(ztsnr[0]), float(ztsnr[-1]), rho=7.0)
    shown = _first_row(preview, "sigma")
    assert shown[:3] == [f"{float(s):.1f}" for s in expected[:3]]
    above = int((expected[:-1] > 14.615).sum())
    assert f"{above} steps above sigma 14.6" in preview
    assert "vpred-preview-warning" in preview
    assert "Trailing" in preview

    # Refresh (and our own controls) read the session state
    refresh_status, refresh_preview, header = script._vpred_links.panel.update(*controls, state)
    assert refresh_preview == preview
    assert refresh_status == status.replace("trailing steps", "steps from the Schedule type")
    assert header["label"] == "V-Prediction / ZTSNR: v-pred + ZTSNR · Schedule type · φ 0.7"


def test_img2img_preview_starts_where_the_webui_slices(make_webui):
    w = new_webui(make_webui, models=(V_SD1,))
    blocks, script, _runner, created = _tab(w, True, after=[I2I_DENOISE])
    on_denoise = _listener(blocks, created["img2img_denoising_strength"])
    _state, status, preview, header = on_denoise(0.5, {}, *_controls(script))
    # Auto gives img2img trailing whatever the sampler (the stand-in's default is DPM++ 2M, exponential in txt2img),
    # and the status line and header of the img2img tab say so
    assert "img2img, DPM++ 2M, trailing (VPred)" in preview, preview
    assert "trailing steps" in status
    assert "· trailing ·" in header["label"]
    # setup_img2img_steps: t_enc = int(0.5 * 20) = 10; sigma_sched = sigmas[20 - 10 - 1:], trailing t = 999 - 50 * 9
    steps, t_enc = 20, int(0.5 * 20)
    start = steps - t_enc - 1
    t_start = round(1000 - start * 1000 / steps) - 1
    assert t_start == 549
    assert f"strength 0.5: {t_enc + 1} steps of a 20-step schedule, starting at t={t_start}" in preview
    assert _first_row(preview, "t")[0] == str(t_start)


def test_hires_pass_preview(make_webui):
    w = new_webui(make_webui, models=(V_SD1,))
    hr = (gr.Checkbox, "txt2img_hr-checkbox", {"value": True})
    hr_denoise = (gr.Slider, "txt2img_denoising_strength", {"minimum": 0, "maximum": 1, "value": 0.7})
    blocks, script, _runner, created = _tab(w, False, before=[STEPS, hr], after=[hr_denoise])
    _state, _status, preview, _header = _listener(blocks, created["txt2img_denoising_strength"])(
        0.7, {}, *_controls(script)
    )
    # hires: steps given -> virtual int(20 / 0.7) = 28, t_enc = 19, start 28 - 19 - 1 = 8; trailing t(8) of 28
    virtual = int(20 / 0.7)
    t_start = round(1000 - 8 * 1000 / virtual) - 1
    assert "hires pass" in preview
    assert f"strength 0.7: 20 steps of a {virtual}-step schedule, starting at t={t_start}" in preview


def test_status_and_preview_for_eps_model(make_webui):
    w = new_webui(make_webui, models=(EPS_SD1,))
    blocks, script, _runner, created = _tab(w, False, before=[STEPS])
    _state, status, preview, header = _listener(blocks, created["txt2img_steps"])(20, {}, *_controls(script))
    assert header["label"] == "V-Prediction / ZTSNR: eps checkpoint, nothing to do"
    assert "eps checkpoint: unchanged" in status
    assert "stock sigmas" in preview
    assert "VPred: eps checkpoint: unchanged" in preview
    assert "first at t=999 (sigma 14.6)" in preview
    assert "0 steps above sigma 14.6" in preview


def test_degrades_without_webui_components_and_model(make_webui):
    """API-only (no WebUI components found) and no checkpoint: the panel builds, Refresh works, nothing raises."""
    w = new_webui(make_webui, models=())
    script = _script(w, False)
    panel = script._vpred_links.panel
    assert panel.webui == {}
    status, preview, _header = panel.update(*_controls(script), {})
    assert "no checkpoint loaded" in status
    assert "no checkpoint loaded" in preview
    # a broken preview function is reported in the panel, never raised
    panel.preview_fn = lambda *a: 1 / 0
    _status, preview, _header = panel.update(*_controls(script), {})
    assert "preview unavailable" in preview


def test_after_component_ignores_unrelated_and_never_raises(make_webui):
    w = new_webui(make_webui)
    script = _script(w, False)
    assert script.after_component(object()) is None  # no elem_id
    with gr.Blocks():
        other = gr.Slider(elem_id="img2img_steps")  # the other tab's id
        script.after_component(other)
    assert script._vpred_links.components == {}


def _webui_ddim_calls(steps: int) -> list[int]:
    """v1.10.1 ``CompVisSampler.get_timesteps`` and the ``ddim`` loop (``len - 1`` calls from the top), recomputed."""
    ts = [min(max(t + 1, 0), 999) for t in range(0, 1000, 1000 // steps)]
    return [ts[i] for i in range(len(ts) - 1, 0, -1)]


@pytest.mark.parametrize(("spacing", "expected"), [("Trailing", None), ("Schedule type", "webui")])
def test_timestep_sampler_preview_shows_its_timesteps(make_webui, spacing, expected):
    """DDIM gets its real timesteps: trailing 999, 899, ... (10 calls) or the WebUI's own 901, 801, ... (9 calls)."""
    w = new_webui(make_webui, models=(V_SD1,))
    ddim = (gr.Radio, "txt2img_sampling", {"choices": ["Euler", "DDIM"], "value": "DDIM"})
    blocks, script, _runner, created = _tab(w, False, before=[STEPS, ddim])
    controls = _controls(script)
    controls[3] = spacing
    _state, _status, preview, _header = _listener(blocks, created["txt2img_steps"])(10, {"sampler": "DDIM"}, *controls)
    assert "timestep sampler" not in preview
    calls = [999 - 100 * i for i in range(10)] if expected is None else _webui_ddim_calls(10)
    assert f"{len(calls)} steps, first at t={calls[0]}" in preview, preview
    assert _first_row(preview, "t")[:3] == [str(t) for t in calls[:3]]


def test_trailing_says_it_replaces_a_selected_schedule_type(make_webui):
    w = new_webui(make_webui, models=(V_SD1,))
    blocks, script, _runner, created = _tab(w, False, before=[STEPS, SAMPLER, SCHEDULER])
    on_scheduler = _listener(blocks, created["txt2img_scheduler"])
    _state, _status, preview, _header = on_scheduler("Karras", {}, *_controls(script))
    assert "trailing (VPred), replacing the selected Schedule type Karras" in preview
    _state, _status, preview, _header = on_scheduler("Automatic", {}, *_controls(script))
    assert "replacing" not in preview


def test_auto_spacing_preview_follows_the_tabs_sampler(make_webui):
    """Timestep spacing Auto: DPM++ 2M gets exponential sigmas from sigma_max (k-diffusion's get_sigmas_exponential on
    the ZTSNR table, the independent reference), Euler trailing; status, header and preview agree with the plan."""
    w = new_webui(make_webui, models=(V_SD1,))
    blocks, script, _runner, created = _tab(w, False, before=[STEPS, SAMPLER, SCHEDULER])
    on_sampler = _listener(blocks, created["txt2img_sampling"])
    state, status, preview, header = on_sampler("DPM++ 2M", {}, *_controls(script))
    ztsnr = _ztsnr_sigmas()
    expected = k_diffusion.sampling.get_sigmas_exponential(20, float(ztsnr[0]), float(ztsnr[-1]))
    assert "DPM++ 2M, exponential (VPred)" in preview, preview
    assert _first_row(preview, "t")[0] == "999"
    assert _first_row(preview, "sigma")[:2] == [f"{float(expected[0]):.1f}", f"{float(expected[1]):.1f}"]
    assert "exponential steps from pure noise" in status
    assert header["label"] == "V-Prediction / ZTSNR: v-pred + ZTSNR · exponential · φ 0.7"
    _state, status, preview, header = on_sampler("Euler", state, *_controls(script))
    assert "Euler, trailing (VPred)" in preview
    assert "trailing steps" in status
    assert header["label"] == "V-Prediction / ZTSNR: v-pred + ZTSNR · trailing · φ 0.7"


def test_status_is_true_for_the_tabs_sampler(make_webui):
    """DDIM CFG++ applies no CFG rescale: the status of a tab with it selected says so (and warns)."""
    w = new_webui(make_webui, models=(V_SD1,))
    sampler = (gr.Radio, "txt2img_sampling", {"choices": ["Euler", "DDIM CFG++"], "value": "Euler"})
    blocks, script, _runner, created = _tab(w, False, before=[STEPS, sampler])
    on_sampler = _listener(blocks, created["txt2img_sampling"])
    _state, status, _preview, _header = on_sampler("Euler", {}, *_controls(script))
    assert "CFG rescale 0.7" in status
    _state, status, _preview, header = on_sampler("DDIM CFG++", {}, *_controls(script))
    assert "no CFG rescale" in status
    assert "1 warning" in status
    assert "DDIM CFG++" in status  # the warning is the hover text
    assert "no CFG rescale" in header["label"]
