"""Live tier, more real checkpoints: SD2 768-v, SDXL v-pred (a VScaling YAML, and NoobAI-style marker keys beside a
stock EpsScaling YAML), and model switches between them and the SD1 pair within one WebUI process.

Same setup and skip rule as ``test_live.py`` (``VPRED_WEBUI_URL``); the checkpoints come from
``tests/webui/tiny_models.py`` (``tiny-sd2-v``, ``tiny-sdxl-v``, ``tiny-sdxl-vpredkeys``). A PNG from the API carries
the infotext (model name and hash included) in a text chunk, so images of different checkpoints are compared by
their pixels.
"""

from __future__ import annotations

import base64
import io
import re
from typing import Any

import pytest
from PIL import Image

from tests.webui.test_live import EPS, URL, VPRED, call, generate, infotext

pytestmark = [pytest.mark.webui, pytest.mark.skipif(not URL, reason="set VPRED_WEBUI_URL to run the live tier")]

SD2 = "tiny-sd2-v"
SDXL_V = "tiny-sdxl-v"
SDXL_KEYS = "tiny-sdxl-vpredkeys"

#: For SDXL the WebUI loads models/VAE-approx/vaeapprox-sdxl.pt for live previews and would download it (offline:
#: URLError, HTTP 500); previews play no part in these tests, so they are off for every request here.
NO_PREVIEW = {"live_previews_enable": False}
#: Options these tests override. The WebUI restores an overridden option after the request only if it was in its
#: config before (processing.py:823, ``if k in opts.data``), and from then on restores the overridden value: only
#: ``POST /sdapi/v1/options`` puts them back, so later tests and tiers see the WebUI as it was.
OVERRIDDEN = ("live_previews_enable", "sdxl_crop_top")

V_NO_ZTSNR = {
    "VPred prediction": "v-prediction (auto)",
    "VPred ZTSNR": "off (auto)",
    "VPred spacing": "trailing (auto)",
    "VPred CFG rescale": "0.7",
}
V_ZTSNR = {**V_NO_ZTSNR, "VPred ZTSNR": "on (auto)"}


@pytest.fixture(scope="module", autouse=True)
def options_before() -> Any:
    status, options = call("/sdapi/v1/options")
    assert status == 200, options
    before = {k: options[k] for k in OVERRIDDEN}
    yield before
    restore_options(before)


def restore_options(before: dict[str, Any]) -> None:
    status, out = call("/sdapi/v1/options", before)
    assert status == 200, out


def run(kind: str, checkpoint: str, vpred: Any = None, **fields: Any) -> dict[str, Any]:
    overrides = {**NO_PREVIEW, **fields.pop("override_settings", {})}
    return generate(kind, checkpoint, vpred, override_settings=overrides, **fields)


def vpred_keys(out: dict[str, Any]) -> dict[str, str]:
    """The extension's infotext keys of the first image (``VPred ...: value``)."""
    params = infotext(out).splitlines()[-1]
    return dict(m.groups() for m in re.finditer(r"(VPred[^:,]*): ([^,]*)", params))


def pixels(out: dict[str, Any], index: int = 0) -> tuple[tuple[int, int], bytes]:
    with Image.open(io.BytesIO(base64.b64decode(out["images"][index]))) as image:
        return image.size, image.tobytes()


def loaded_status(checkpoint: str) -> dict[str, Any]:
    """``GET /vpred/v1/status``: what the extension detects for the loaded checkpoint (the last request's)."""
    status, out = call("/vpred/v1/status")
    assert status == 200, out
    assert out["checkpoint"] == f"{checkpoint}.safetensors", out["checkpoint"]
    return out


def test_the_tiny_checkpoints_are_listed():
    status, models = call("/sdapi/v1/sd-models")
    assert status == 200
    assert {VPRED, EPS, SD2, SDXL_V, SDXL_KEYS} <= {m["model_name"] for m in models}


def test_sd2_768v_is_v_pred_with_ztsnr_off_under_auto():
    out = run("txt2img", SD2)
    assert vpred_keys(out) == V_NO_ZTSNR
    status = loaded_status(SD2)
    assert status["webui_prediction"] == "v"
    det = status["detection"]
    assert (det["family"], det["prediction"], det["prediction_source"], det["ztsnr"]) == ("SD2", "v", "yaml", None)
    assert "SD2 v-pred (768-v) was trained without ZTSNR" in status["details"]  # the reason (hover text)
    assert "zero terminal SNR" not in status["status"]
    # Auto is really off: the same image as ZTSNR set Off, another one with it On
    assert pixels(run("txt2img", SD2, vpred=[{"ztsnr": "Off"}])) == pixels(out)
    assert pixels(run("txt2img", SD2, vpred=[{"ztsnr": "On"}])) != pixels(out)
    off = run("txt2img", SD2, vpred=[False])
    assert vpred_keys(off) == {"VPred": "disabled"}
    assert pixels(off) != pixels(out)  # trailing spacing and CFG rescale still change it
    img = run("img2img", SD2, init_images=[out["images"][0]], denoising_strength=0.5)
    assert vpred_keys(img) == V_NO_ZTSNR


def test_sdxl_with_a_vscaling_yaml_is_v_pred_with_ztsnr(options_before):
    out = run("txt2img", SDXL_V)
    assert pixels(out)[0] == (64, 64)
    assert vpred_keys(out) == V_ZTSNR
    status = loaded_status(SDXL_V)
    assert status["webui_prediction"] == "v"  # the WebUI reads VScaling itself (sd_models_xl.extend_sdxl)
    det = status["detection"]
    assert (det["family"], det["prediction"], det["prediction_source"]) == ("SDXL", "v", "yaml")
    assert (det["ztsnr"], det["ztsnr_source"]) == (True, "yaml")  # the YAML's top-level ztsnr: true
    off = run("txt2img", SDXL_V, vpred=[False])
    assert vpred_keys(off) == {"VPred": "disabled"}
    assert pixels(off) != pixels(out)
    assert pixels(run("txt2img", SDXL_V, vpred=[{"ztsnr": "Off"}])) != pixels(out)
    # the size/crop vector conditioning reaches the UNet (adm_in_channels: pooled + size/crop embeddings)
    try:
        assert pixels(run("txt2img", SDXL_V, override_settings={"sdxl_crop_top": 32})) != pixels(out)
    finally:
        restore_options(options_before)
    assert pixels(run("txt2img", SDXL_V)) == pixels(out)
    img = run("img2img", SDXL_V, init_images=[out["images"][0]], denoising_strength=0.5)
    assert pixels(img)[0] == (64, 64)
    assert vpred_keys(img) == V_ZTSNR
    hires = run(
        "txt2img",
        SDXL_V,
        batch_size=2,
        enable_hr=True,
        hr_scale=1.5,
        hr_second_pass_steps=3,
        denoising_strength=0.5,
    )
    assert [pixels(hires, i)[0] for i in range(2)] == [(96, 96), (96, 96)]
    assert vpred_keys(hires) == V_ZTSNR


def test_sdxl_v_pred_keys_beside_an_eps_scaling_yaml_sample_exactly_like_the_vscaling_twin():
    """Same tensors, plus empty ``v_pred``/``ztsnr`` markers; the WebUI itself samples it as eps (its YAML keeps the
    stock EpsScaling), the extension as v with ZTSNR: the very images of the VScaling twin, sampler by sampler."""
    samplers = ("Euler", "DDIM", "DPM++ 2M")
    yaml_twin = {s: run("txt2img", SDXL_V, sampler_name=s) for s in samplers}
    yaml_img = run("img2img", SDXL_V, init_images=[yaml_twin["Euler"]["images"][0]], denoising_strength=0.5)
    keys_twin = {s: run("txt2img", SDXL_KEYS, sampler_name=s) for s in samplers}
    keys_img = run("img2img", SDXL_KEYS, init_images=[yaml_twin["Euler"]["images"][0]], denoising_strength=0.5)
    status = loaded_status(SDXL_KEYS)
    assert status["webui_prediction"] == "eps"
    det = status["detection"]
    assert (det["family"], det["prediction"], det["prediction_source"]) == ("SDXL", "v", "key")
    assert (det["ztsnr"], det["ztsnr_source"]) == (True, "key")
    assert any(w.startswith("conflicting prediction") and "EpsScaling" in w for w in det["warnings"])
    for sampler in samplers:
        assert vpred_keys(keys_twin[sampler]) == vpred_keys(yaml_twin[sampler]), sampler
        assert pixels(keys_twin[sampler]) == pixels(yaml_twin[sampler]), sampler
    assert vpred_keys(keys_twin["Euler"]) == V_ZTSNR
    assert vpred_keys(keys_img) == V_ZTSNR
    assert pixels(keys_img) == pixels(yaml_img)
    off = run("txt2img", SDXL_KEYS, vpred=[False])  # the WebUI's own eps sampling
    assert vpred_keys(off) == {"VPred": "disabled"}
    assert pixels(off) != pixels(keys_twin["Euler"])


def _eps_is_stock(reference: dict[str, Any] | None) -> dict[str, Any]:
    enabled = run("txt2img", EPS)
    disabled = run("txt2img", EPS, vpred=[False])
    assert base64.b64decode(enabled["images"][0]) == base64.b64decode(disabled["images"][0])
    assert "VPred" not in infotext(enabled)
    if reference is not None:  # nothing from the v models leaked into the eps sampling
        assert enabled["images"][0] == reference["images"][0]
    return enabled


def test_switching_sd1_sd2_sdxl_and_eps_in_one_process():
    """Every load is a new model (each checkpoint has its own YAML); after each return to the eps checkpoint its
    image is the stock one, and every v checkpoint gives the same image each time it comes back."""
    sequence = (VPRED, SDXL_V, EPS, SD2, SDXL_KEYS, EPS, SDXL_V, VPRED, EPS, SD2, EPS)
    first: dict[str, dict[str, Any]] = {}
    eps_reference = None
    for checkpoint in sequence:
        if checkpoint == EPS:
            eps_reference = _eps_is_stock(eps_reference)
            continue
        out = run("txt2img", checkpoint)
        assert vpred_keys(out) == (V_NO_ZTSNR if checkpoint == SD2 else V_ZTSNR), checkpoint
        if checkpoint in first:
            assert pixels(out) == pixels(first[checkpoint]), checkpoint
        first.setdefault(checkpoint, out)
