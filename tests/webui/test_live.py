"""Live tier: sd-webui-vpred inside a real, running AUTOMATIC1111 WebUI, over HTTP.

``bash tools/dev.sh test`` builds and starts the WebUI (``tools/host.py``) and sets ``VPRED_WEBUI_URL``; without it
these tests are skipped. The WebUI must run with ``--api``, this extension installed, and the tiny checkpoints from
``tests/webui/tiny_models.py`` (titles from ``VPRED_WEBUI_VPRED`` / ``VPRED_WEBUI_EPS``, default ``tiny-vpred`` /
``tiny-eps``). ``VPRED_WEBUI_LOG`` names the WebUI's log file, to check that the extension loaded without errors.
See ``tests/webui/README.md``.
Only the given URL is contacted (it should be a loopback address).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from typing import Any

import pytest

from tests.webui.forge_client import request

URL = os.environ.get("VPRED_WEBUI_URL", "").rstrip("/")
VPRED = os.environ.get("VPRED_WEBUI_VPRED", "tiny-vpred")
EPS = os.environ.get("VPRED_WEBUI_EPS", "tiny-eps")
LOG = os.environ.get("VPRED_WEBUI_LOG")

SKIP_REASON = (
    "no WebUI: `bash tools/dev.sh test` starts one (VPRED_LIVE=1 builds it from GitHub), or set VPRED_WEBUI_URL"
)
pytestmark = [pytest.mark.webui, pytest.mark.skipif(not URL, reason=SKIP_REASON)]

SMALL = {"width": 64, "height": 64, "steps": 4, "cfg_scale": 7.0, "seed": 1234, "sampler_name": "Euler"}


def call(path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """GET (no body) or POST JSON to the WebUI: (HTTP status, decoded JSON or text)."""
    return request(URL, path, body)


def generate(kind: str, checkpoint: str, vpred: Any = None, **fields: Any) -> dict[str, Any]:
    overrides = {**fields.pop("override_settings", {}), "sd_model_checkpoint": checkpoint}
    body = {**SMALL, **fields, "override_settings": overrides}
    if vpred is not None:
        body["alwayson_scripts"] = {"vpred": {"args": vpred}}
    status, out = call(f"/sdapi/v1/{kind}", body)
    assert status == 200, out
    out["info"] = json.loads(out["info"])
    # An unknown checkpoint override is silently dropped by the WebUI (processing.py:828-830): make sure it took.
    assert out["info"]["sd_model_name"] == checkpoint, out["info"]["sd_model_name"]
    return out


def pixels(out: dict[str, Any], index: int = 0) -> bytes:
    """The decoded pixels of an API image (PNG bytes also carry the infotext, which differs between settings)."""
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(out["images"][index]))) as image:
        return image.convert("RGB").tobytes()


def infotext(out: dict[str, Any]) -> str:
    return out["info"]["infotexts"][0]


def test_script_is_listed_for_both_tabs():
    status, scripts = call("/sdapi/v1/scripts")
    assert status == 200
    assert "vpred" in scripts["txt2img"]
    assert "vpred" in scripts["img2img"]


def test_log_has_no_extension_errors():
    if not LOG:
        pytest.skip("set VPRED_WEBUI_LOG to check the WebUI log")
    with open(LOG, encoding="utf-8", errors="replace") as f:
        text = f.read()
    # the WebUI's own reports for a failing script or callback (scripts.py, script_callbacks.py)
    pattern = re.compile(r"Error (loading script|running \w+|executing callback \w+).*vpred", re.IGNORECASE)
    bad = [line for line in text.splitlines() if pattern.search(line)]
    assert not bad, bad


def test_schema_and_validate_endpoints():
    status, schema = call("/vpred/v1/schema")
    assert status == 200
    assert schema["positional_order"][:5] == ["enabled", "prediction", "ztsnr", "spacing", "cfg_rescale"]
    status, good = call("/vpred/v1/validate", {"args": {"cfg_rescale": 0.25}})
    assert (status, good["params"]["cfg_rescale"]) == (200, 0.25)
    status, bad = call("/vpred/v1/validate", {"args": [True, "Auto", "Auto", "Trailing", 3]})
    assert status == 422
    assert bad["field"] == "cfg_rescale"


def test_vpred_txt2img_defaults_write_infotext():
    out = generate("txt2img", VPRED)
    text = infotext(out)
    assert "VPred prediction: v-prediction (auto)" in text
    assert "VPred ZTSNR: on (auto)" in text
    assert "VPred spacing: trailing (auto)" in text  # Euler: Auto resolves to trailing
    assert "VPred CFG rescale: 0.7" in text


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([{"cfg_rescale": 0.3}], "VPred CFG rescale: 0.3"),
        ([True, "Auto", "Auto", "Trailing", 0.45], "VPred CFG rescale: 0.45"),
        ([True, "v-prediction", "On"], "VPred ZTSNR: on,"),
    ],
)
def test_both_api_arg_forms(args, expected):
    out = generate("txt2img", VPRED, vpred=args)
    assert expected in infotext(out) + ","


def test_vpred_batch_hires_and_img2img():
    out = generate(
        "txt2img", VPRED, batch_size=2, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=3, denoising_strength=0.5
    )
    assert len(out["images"]) == 2
    assert "VPred ZTSNR: on (auto)" in infotext(out)
    img = generate("img2img", VPRED, init_images=[out["images"][0]], denoising_strength=0.5)
    assert "VPred spacing: trailing" in infotext(img)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ([{"cfg_rescale": 1.5}], "cfg_rescale"),
        ([{"phi": 0.5}], "phi"),
        ([True, "maybe"], "prediction"),
        (["yes"], "enabled"),
    ],
)
def test_bad_input_fails_cleanly_and_server_keeps_serving(args, field):
    body = {
        **SMALL,
        "override_settings": {"sd_model_checkpoint": VPRED},
        "alwayson_scripts": {"vpred": {"args": args}},
    }
    status, out = call("/sdapi/v1/txt2img", body)
    assert status == 422, out
    assert field in json.dumps(out)
    assert "VPred CFG rescale: 0.7" in infotext(generate("txt2img", VPRED))


def test_eps_twin_is_byte_identical_enabled_or_disabled():
    enabled = generate("txt2img", EPS)
    disabled = generate("txt2img", EPS, vpred=[False])
    assert base64.b64decode(enabled["images"][0]) == base64.b64decode(disabled["images"][0])
    assert "VPred" not in infotext(enabled)
    en2 = generate("img2img", EPS, init_images=[enabled["images"][0]], denoising_strength=0.6)
    dis2 = generate("img2img", EPS, init_images=[enabled["images"][0]], denoising_strength=0.6, vpred=[False])
    assert en2["images"][0] == dis2["images"][0]


def test_vpred_changes_the_image_and_disabling_restores_stock():
    on = generate("txt2img", VPRED)
    off = generate("txt2img", VPRED, vpred=[False])
    assert pixels(on) != pixels(off)
    assert "VPred: disabled" in infotext(off)  # recorded on a v checkpoint so that pasting reproduces it
    assert "VPred prediction" not in infotext(off)


def test_infotext_round_trip_restores_the_controls():
    first = generate("txt2img", VPRED, vpred=[{"ztsnr": "On", "cfg_rescale": 0.35}])
    text = infotext(first)
    assert "VPred CFG rescale: 0.35" in text
    body = {**SMALL, "infotext": text, "override_settings": {"sd_model_checkpoint": VPRED}}
    status, again = call("/sdapi/v1/txt2img", body)
    assert status == 200, again
    again_text = json.loads(again["info"])["infotexts"][0]
    assert "VPred CFG rescale: 0.35" in again_text
    assert "VPred ZTSNR: on" in again_text


@pytest.mark.parametrize("sampler", ["DDIM", "PLMS", "UniPC", "DDIM CFG++", "Heun", "DPM++ 2M"])
def test_every_sampler_family_on_both_checkpoints(sampler):
    status, samplers = call("/sdapi/v1/samplers")
    assert status == 200
    if sampler not in [s["name"] for s in samplers]:
        pytest.skip(f"{sampler} does not exist in this WebUI release (DDIM CFG++ arrived in 1.10)")
    out = generate(
        "txt2img",
        VPRED,
        sampler_name=sampler,
        enable_hr=True,
        hr_scale=1.5,
        hr_second_pass_steps=3,
        denoising_strength=0.5,
    )
    text = infotext(out)
    spacing = "exponential (auto)" if sampler == "DPM++ 2M" else "trailing (auto)"  # Timestep spacing: Auto
    assert "VPred ZTSNR: on (auto)" in text
    assert f"VPred spacing: {spacing}" in text
    assert ("VPred CFG rescale: 0.0" if sampler == "DDIM CFG++" else "VPred CFG rescale: 0.7") in text
    if sampler == "DPM++ 2M":  # Auto gives the hires pass trailing (its strength slices the schedule), and says so
        assert "VPred hires spacing: trailing (auto)" in text
    img = generate("img2img", VPRED, sampler_name=sampler, init_images=[out["images"][0]], denoising_strength=0.5)
    assert "VPred spacing: trailing (auto)" in infotext(img)  # img2img too
    enabled = generate("txt2img", EPS, sampler_name=sampler)
    disabled = generate("txt2img", EPS, sampler_name=sampler, vpred=[False])
    assert enabled["images"][0] == disabled["images"][0]
    assert "VPred" not in infotext(enabled)


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "LMS"])
def test_auto_spacing_is_the_webuis_own_exponential_schedule_for_dpmpp_2m_and_lms(sampler):
    """Timestep spacing Auto (the default) gives DPM++ 2M and LMS exponential spacing from the ZTSNR sigma_max: the same
    image, pixel for pixel, as the WebUI's own Exponential schedule type with ``Timestep spacing: Schedule type`` (the
    WebUI computes that one from the same ZTSNR table); another image than trailing; recorded as
    ``exponential (auto)`` (the WebUI still writes the selected ``Schedule type``; pasting restores both, and Auto
    replaces it again)."""
    fields = {"sampler_name": sampler, "steps": 6, "scheduler": "Karras"}
    auto = generate("txt2img", VPRED, **fields)
    own = generate(
        "txt2img", VPRED, vpred=[True, "Auto", "Auto", "Schedule type", 0.7], **{**fields, "scheduler": "Exponential"}
    )
    trailing = generate("txt2img", VPRED, vpred=[True, "Auto", "Auto", "Trailing", 0.7], **fields)
    assert pixels(auto) == pixels(own)
    assert pixels(auto) != pixels(trailing)
    assert "VPred spacing: exponential (auto)" in infotext(auto)
    assert "VPred spacing: schedule type" in infotext(own)
    assert "VPred spacing: trailing," in infotext(trailing) + ","


#: A prompt and a negative prompt the tiny text encoder tells apart, so that CFG really guides (with SMALL's empty
#: prompts cond == uncond and the rescale has nothing to do). (The tiny random model gives NaN for some words, e.g.
#: "red": a property of its random weights, with or without the extension.)
GUIDED = {"prompt": "a cat, masterpiece", "negative_prompt": "ugly, green, blurry", "cfg_scale": 12.0}


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_cfg_rescale_changes_the_v_image_and_phi_zero_is_plain_cfg(sampler):
    """φ is really applied in both sampler families: φ 0.7 and φ 0 differ; the same φ twice is the same image."""
    rescaled = generate("txt2img", VPRED, vpred=[{"cfg_rescale": 0.7}], sampler_name=sampler, **GUIDED)
    plain = generate("txt2img", VPRED, vpred=[{"cfg_rescale": 0.0}], sampler_name=sampler, **GUIDED)
    again = generate("txt2img", VPRED, vpred=[{"cfg_rescale": 0.0}], sampler_name=sampler, **GUIDED)
    assert pixels(plain) == pixels(again)
    assert pixels(rescaled) != pixels(plain)
    assert "VPred CFG rescale: 0.7" in infotext(rescaled)


def test_nothing_leaks_into_the_loaded_model():
    """The ZTSNR table, trailing override and CFG-rescale wrapper live only for their pass: a disabled v-pred image
    right after the checkpoint was loaded fresh from disk equals one made after enabled generations of every kind
    (k-diffusion with hires, timestep, img2img)."""
    generate("txt2img", EPS)  # switch away: the next v-pred request loads the checkpoint fresh from disk
    fresh = generate("txt2img", VPRED, vpred=[False], **GUIDED)
    fresh_ddim = generate("txt2img", VPRED, vpred=[False], sampler_name="DDIM", **GUIDED)
    out = generate(
        "txt2img", VPRED, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, denoising_strength=0.5, **GUIDED
    )
    generate("txt2img", VPRED, sampler_name="DDIM", **GUIDED)
    generate("img2img", VPRED, init_images=[out["images"][0]], denoising_strength=0.5, **GUIDED)
    after = generate("txt2img", VPRED, vpred=[False], **GUIDED)
    after_ddim = generate("txt2img", VPRED, vpred=[False], sampler_name="DDIM", **GUIDED)
    assert pixels(fresh) == pixels(after)
    assert pixels(fresh_ddim) == pixels(after_ddim)
