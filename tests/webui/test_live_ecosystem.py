"""Live tier, WebUI ecosystem: the Trailing schedule type, XYZ axes over the API, Settings and per-checkpoint overrides.

Same setup and skip rule as ``test_live.py`` (``VPRED_WEBUI_URL``).
"""

from __future__ import annotations

import json

import pytest

from tests.webui.test_live import EPS, SKIP_REASON, SMALL, URL, VPRED, call, generate, infotext

pytestmark = [pytest.mark.webui, pytest.mark.skipif(not URL, reason=SKIP_REASON)]

XYZ = "x/y/z plot"


def test_trailing_schedule_type_is_listed_and_usable_without_the_panel():
    status, schedulers = call("/sdapi/v1/schedulers")
    assert status == 200
    assert "Trailing" in [s["label"] for s in schedulers]
    out = generate("txt2img", EPS, vpred=[False], scheduler="Trailing")
    assert "Schedule type: Trailing" in infotext(out)


def _xyz_axis_index(label: str) -> int:
    status, info = call("/sdapi/v1/script-info")
    assert status == 200
    xyz = next(s for s in info if s["name"] == XYZ and not s["is_img2img"])
    choices = xyz["args"][0]["choices"]
    assert label in choices, choices
    return choices.index(label)


def test_xyz_plot_over_phi_and_ztsnr_via_the_api():
    x = _xyz_axis_index("[VPred] CFG rescale φ")
    y = _xyz_axis_index("[VPred] Zero terminal SNR")
    #        x_type, x_values, x_dropdown, y_type, y_values, y_dropdown, z_type, z_values, z_dropdown,
    #        legend, lone images, sub grids, no_fixed_seeds, vary x, vary y, vary z, margin, csv_mode
    args = [x, "0, 0.5", [], y, "", ["On", "Off"], 0, "", [], True, True, False, False, False, False, False, 0, False]
    body = {
        **SMALL,
        "override_settings": {"sd_model_checkpoint": VPRED},
        "script_name": XYZ,
        "script_args": args,
    }
    status, out = call("/sdapi/v1/txt2img", body)
    assert status == 200, out
    texts = json.loads(out["info"])["infotexts"]
    cells = [t for t in texts if "X Type" not in t]  # the grid's own infotext carries the axis description
    assert len(cells) == 4, texts
    found = {("VPred CFG rescale: 0.5" in t, "VPred ZTSNR: on," in t + ",") for t in cells}
    assert found == {(False, True), (True, True), (False, False), (True, False)}


def test_per_checkpoint_override_setting_at_runtime():
    status, _ = call("/sdapi/v1/options", {"vpred_checkpoint_overrides": "tiny-eps*: prediction=v, ztsnr=on"})
    assert status == 200
    try:
        out = generate("txt2img", EPS)
        text = infotext(out)
        assert "VPred prediction: v-prediction (auto)" in text
        assert "VPred ZTSNR: on (auto)" in text
    finally:
        call("/sdapi/v1/options", {"vpred_checkpoint_overrides": ""})
    assert "VPred" not in infotext(generate("txt2img", EPS))


def test_settings_are_registered():
    status, options = call("/sdapi/v1/options")
    assert status == 200
    for key in (
        "vpred_default_enabled",
        "vpred_default_prediction",
        "vpred_default_ztsnr",
        "vpred_default_spacing",
        "vpred_default_cfg_rescale",
        "vpred_assume_sd1_ztsnr",
        "vpred_checkpoint_overrides",
    ):
        assert key in options, key
