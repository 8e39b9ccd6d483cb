"""Live tier, Forge: sd-webui-vpred acting on a real, unmodified Forge (dfdcbab), seen through the probe extension.

Runs against ``VPRED_FORGE_URL`` (``bash tools/dev.sh test`` starts one; see ``tests/webui/README.md``) with the
full-size random SD1.5 twins ``sd15-v`` (+ YAML, ``parameterization: "v"``) and ``sd15-eps`` (same tensors, no
YAML). The probe (``tests/webui/probe``) records the sigma and the UNet timestep of every model call, the tensors of
chosen calls and the predictor's sigma table before, during and after each generation.

Golden values come from an independent computation: the ZTSNR table and the trailing timesteps from diffusers'
``DDIMScheduler`` (``rescale_betas_zero_snr=True``, ``timestep_spacing="trailing"``) with the terminal alpha-bar kept
finite as the WebUI does (4.8973451890853435e-08); CFG rescale recomputed in float64 from the probe's captured x,
sigma, cond and uncond predictions with Algorithm 2 written out in v (not with ``lib_vpred``).
"""

from __future__ import annotations

import io
import json
import math
import threading
import time
from typing import Any

import pytest
import torch

from tests.webui.forge_client import STOCK_SIGMA_MAX, STOCK_SIGMA_MIN, call, require_forge, tensor

require_forge()
pytestmark = [pytest.mark.webui]

V, EPS = "sd15-v", "sd15-eps"
SMALL = {
    "prompt": "a cat",
    "negative_prompt": "",
    "width": 64,
    "height": 64,
    "cfg_scale": 7.0,
    "seed": 1234,
    "sampler_name": "Euler",
    "scheduler": "Automatic",
}
TERMINAL_ALPHA_BAR = 4.8973451890853435e-08  # the WebUI's / ComfyUI's finite last alpha-bar
ZTSNR_SIGMA_MAX = 4518.76


def ztsnr_sigma(t: int) -> float:
    """sigma(t) of the SD scaled-linear schedule rescaled to zero terminal SNR, from diffusers (independent)."""
    return _reference()[0][t]


def trailing(steps: int) -> list[int]:
    return _reference_trailing(steps)


_CACHE: dict[str, Any] = {}


def _reference() -> tuple[list[float], list[float]]:
    if "table" not in _CACHE:
        from diffusers import DDIMScheduler

        s = DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            rescale_betas_zero_snr=True,
            timestep_spacing="trailing",
        )
        abar = s.alphas_cumprod.to(torch.float64).clone()
        abar[-1] = TERMINAL_ALPHA_BAR
        _CACHE["table"] = (((1 - abar) / abar).sqrt().tolist(), abar.tolist())
    return _CACHE["table"]


def _reference_trailing(steps: int) -> list[int]:
    from diffusers import DDIMScheduler

    s = DDIMScheduler(beta_schedule="scaled_linear", rescale_betas_zero_snr=True, timestep_spacing="trailing")
    s.set_timesteps(steps)
    return [int(t) for t in s.timesteps]


def generate(
    checkpoint: str, vpred: Any = None, kind: str = "txt2img", capture: Any = (0,), **fields: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One generation; returns (the API answer with its info decoded, the probe's record)."""
    status, reset = call("/vpred-probe/v1/reset", {"capture": capture if capture == "all" else list(capture)})
    assert status == 200, reset
    extra = fields.pop("override_settings_extra", {})
    body = {**SMALL, **fields, "override_settings": {"sd_model_checkpoint": checkpoint, **extra}}
    if vpred is not None:
        body["alwayson_scripts"] = {"vpred": {"args": vpred}}
    status, out = call(f"/sdapi/v1/{kind}", body)
    assert status == 200, out
    out["info"] = json.loads(out["info"])
    assert out["info"]["sd_model_name"] == checkpoint
    status, probe = call("/vpred-probe/v1/last")
    assert status == 200, probe
    assert not probe.get("errors"), probe["errors"]
    return out, probe


def infotext(out: dict[str, Any]) -> str:
    return out["info"]["infotexts"][0]


def pixels(out: dict[str, Any]) -> bytes:
    import base64

    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(out["images"][0]))) as image:
        return image.convert("RGB").tobytes()


def assert_stock_after(probe: dict[str, Any]) -> None:
    after = probe["sigmas_after"]
    assert after["n"] == 1000
    assert math.isclose(after["min"], STOCK_SIGMA_MIN, rel_tol=1e-4), after
    assert math.isclose(after["max"], STOCK_SIGMA_MAX, rel_tol=1e-6), after
    assert after == probe["sigmas_before"]


def as_tensor(entry: dict[str, Any]) -> torch.Tensor:
    shape, values = tensor(entry)
    return torch.tensor(values, dtype=torch.float64).reshape(shape)


def cfg_rescale_reference(
    x: torch.Tensor,
    sigma: float,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scale: float,
    phi: float,
    weights: float = 1,
) -> torch.Tensor:
    """Algorithm 2 in v, from k-diffusion quantities: x = x0 + sigma * eps (VE), alpha-bar = 1 / (sigma^2 + 1),
    v = sqrt(abar) eps - sqrt(1 - abar) x0; std per sample over C, H, W; back to x0 = sqrt(abar) x_vp - sqrt(1-abar) v."""
    abar = 1.0 / (sigma * sigma + 1.0)
    x_vp = x * math.sqrt(abar)

    def v_of(x0: torch.Tensor) -> torch.Tensor:
        eps = (x - x0) / sigma
        return math.sqrt(abar) * eps - math.sqrt(1 - abar) * x0

    # ``cond`` is Forge's weighted mean of the AND sub-prompts; A1111's CFG sums them: uncond + sum_i w_i s (c_i - u),
    # i.e. the positive prediction (CFG at scale 1) is uncond + W (mean - uncond) with W the weight sum
    v_cond, v_neg = v_of(cond), v_of(uncond)
    v_pos = v_neg + weights * (v_cond - v_neg)
    v_cfg = v_neg + scale * (v_pos - v_neg)
    dims = tuple(range(1, x.ndim))
    ratio = v_pos.std(dim=dims, keepdim=True) / v_cfg.std(dim=dims, keepdim=True)
    v_final = phi * (v_cfg * ratio) + (1 - phi) * v_cfg
    return math.sqrt(abar) * x_vp - math.sqrt(1 - abar) * v_final


@pytest.fixture(scope="module")
def euler_v():
    return generate(V, steps=10, capture=(0, 5))


def test_forge_is_supported_and_says_so():
    status, out = call("/vpred/v1/status")
    assert status == 200, out
    assert out.get("supported", True), out
    status, scripts = call("/sdapi/v1/scripts")
    assert "vpred" in scripts["txt2img"]
    assert "vpred" in scripts["img2img"]
    status, schedulers = call("/sdapi/v1/schedulers")
    assert "Trailing" in [s["label"] for s in schedulers]


def test_euler_starts_at_the_ztsnr_sigma_max_and_follows_the_trailing_sigmas(euler_v):
    out, probe = euler_v
    sigmas = [c["sigma"][0] for c in probe["calls"]]
    ts = [c["t"][0] for c in probe["calls"]]
    want_t = trailing(10)
    assert want_t == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert ts == [float(t) for t in want_t], ts
    assert math.isclose(sigmas[0], ZTSNR_SIGMA_MAX, abs_tol=0.01), sigmas
    for got, t in zip(sigmas, want_t, strict=True):
        assert math.isclose(got, ztsnr_sigma(t), rel_tol=1e-5), (got, t, ztsnr_sigma(t))
    assert probe["sigmas_during"]["max"] == pytest.approx(ZTSNR_SIGMA_MAX, abs=0.01)
    assert_stock_after(probe)
    text = infotext(out)
    for key in ("VPred prediction: v-prediction (auto)", "VPred ZTSNR: on (auto)", "VPred spacing: trailing"):
        assert key in text, text
    assert "VPred CFG rescale: 0.7" in text


@pytest.mark.parametrize("index", [0, 5])
def test_cfg_rescale_equals_an_independent_v_space_recomputation(euler_v, index):
    _, probe = euler_v
    call_ = probe["calls"][index]
    assert call_["post_cfg_functions"] == 1  # ours, on the pass's cloned patcher
    t = call_["tensors"]
    x, cond, uncond, result = (as_tensor(t[k]) for k in ("x", "cond_pred", "uncond_pred", "result"))
    sigma = call_["sigma"][0]
    want = cfg_rescale_reference(x, sigma, cond, uncond, call_["cond_scale"], 0.7)
    plain = uncond + call_["cond_scale"] * (cond - uncond)
    scale = want.abs().max().item()
    assert (result - want).abs().max().item() <= 2e-4 * scale, (result - want).abs().max()
    assert (result - plain).abs().max().item() > 1e-3 * scale  # the rescale did something


def test_phi_zero_is_plain_cfg_and_differs_from_phi_07(euler_v):
    out7, _ = euler_v
    out0, probe = generate(V, [True, "Auto", "Auto", "Trailing", 0.0], steps=10)
    first = probe["calls"][0]
    assert first["post_cfg_functions"] == 0
    t = first["tensors"]
    cond, uncond, result = (as_tensor(t[k]) for k in ("cond_pred", "uncond_pred", "result"))
    plain = uncond + first["cond_scale"] * (cond - uncond)
    assert (result - plain).abs().max().item() <= 1e-5 * plain.abs().max().item()
    assert pixels(out0) != pixels(out7)
    assert "VPred CFG rescale: 0.0" in infotext(out0)


def test_ddim_starts_at_t999_with_one_call_per_step():
    out, probe = generate(V, steps=10, sampler_name="DDIM")
    ts = [c["t"][0] for c in probe["calls"]]
    assert ts == [float(t) for t in trailing(10)], ts
    assert all(math.isfinite(v) for v in tensor(probe["calls"][0]["tensors"]["result"])[1])
    assert_stock_after(probe)
    assert "VPred spacing: trailing" in infotext(out)


def test_img2img_half_strength_starts_midway_and_hires_runs_two_passes():
    txt, _ = generate(V, steps=10)
    init = txt["images"][0]
    _, probe = generate(V, kind="img2img", steps=10, init_images=[init], denoising_strength=0.5)
    ts = [c["t"][0] for c in probe["calls"]]
    assert 499 <= ts[0] <= 599, ts  # the WebUI's img2img convention: t_enc + 1 trailing steps
    assert ts == [float(t) for t in trailing(10) if t <= ts[0]], ts
    assert_stock_after(probe)

    out, probe = generate(
        V,
        steps=4,
        enable_hr=True,
        hr_scale=1.5,
        hr_second_pass_steps=4,
        denoising_strength=0.5,
        hr_upscaler="Latent",
        hr_additional_modules=["Use same choices"],
    )
    passes = sorted({c["pass"] for c in probe["calls"]})
    assert len(passes) == 2, passes
    first = [c["t"][0] for c in probe["calls"] if c["pass"] == passes[0]]
    second = [c["t"][0] for c in probe["calls"] if c["pass"] == passes[1]]
    assert first[0] == 999.0
    assert second[0] < 999.0
    assert all(c["post_cfg_functions"] <= 1 for c in probe["calls"])  # the hook ran twice: installed once
    assert_stock_after(probe)
    assert "VPred spacing: trailing" in infotext(out)


def test_eps_twin_is_unchanged_and_byte_identical_enabled_or_disabled():
    enabled, probe = generate(EPS, steps=4)
    disabled, probe_off = generate(EPS, [False], steps=4)
    assert pixels(enabled) == pixels(disabled)
    for p in (probe, probe_off):
        assert p["prediction_type"] == "epsilon"
        assert all(c["post_cfg_functions"] == 0 for c in p["calls"])
        assert p["sigmas_during"] == p["sigmas_before"] == p["sigmas_after"]
    assert "VPred" not in infotext(enabled)


def test_an_interrupted_generation_leaves_the_stock_table():
    done: dict[str, Any] = {}

    def run() -> None:
        done["result"] = generate(V, steps=30, capture=())

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status, progress = call("/sdapi/v1/progress?skip_current_image=true")
        if status == 200 and (progress.get("state") or {}).get("sampling_step", 0) >= 2:
            break
        time.sleep(0.3)
    call("/sdapi/v1/interrupt", {})
    worker.join(timeout=600)
    _, probe = done["result"]
    assert len(probe["calls"]) < 30, len(probe["calls"])  # it really was interrupted
    assert probe["sigmas_during"]["max"] == pytest.approx(ZTSNR_SIGMA_MAX, abs=0.01)
    assert_stock_after(probe)


@pytest.mark.parametrize(
    ("args", "field"), [([{"cfg_rescale": 1.5}], "cfg_rescale"), ([True, "maybe"], "prediction"), (["yes"], "enabled")]
)
def test_bad_input_is_a_422_naming_the_field(args, field):
    body = {
        **SMALL,
        "steps": 2,
        "override_settings": {"sd_model_checkpoint": V},
        "alwayson_scripts": {"vpred": {"args": args}},
    }
    status, out = call("/sdapi/v1/txt2img", body)
    assert status == 422, out
    assert field in json.dumps(out)


def test_and_prompts_rescale_against_the_sum_of_the_sub_prompts():
    """``a cat AND a dog``: two sub-prompts of weight 1; the positive prediction is uncond + 2 (mean - uncond)."""
    _, probe = generate(V, steps=3, prompt="a cat AND a dog")
    call_ = probe["calls"][0]
    t = call_["tensors"]
    x, cond, uncond, result = (as_tensor(t[k]) for k in ("x", "cond_pred", "uncond_pred", "result"))
    want = cfg_rescale_reference(x, call_["sigma"][0], cond, uncond, call_["cond_scale"], 0.7, weights=2)
    wrong = cfg_rescale_reference(x, call_["sigma"][0], cond, uncond, call_["cond_scale"], 0.7, weights=1)
    scale = want.abs().max().item()
    assert (result - want).abs().max().item() <= 2e-4 * scale
    assert (result - wrong).abs().max().item() > 1e-3 * scale  # the weights matter: the test can tell


def test_forges_own_ztsnr_option_is_used_once_and_recorded():
    """Forge's "Zero Terminal SNR" noise schedule swaps its own table in around sampling: the extension sees a ZTSNR
    table, installs none of its own, and the schedule is still the trailing ZTSNR one (not rescaled twice)."""
    try:
        out, probe = generate(V, steps=10, override_settings_extra={"sd_noise_schedule": "Zero Terminal SNR"})
    finally:
        # the WebUI restores only overridden options its config file holds: put it back ourselves
        call("/sdapi/v1/options", {"sd_noise_schedule": "Default"})
    ts = [c["t"][0] for c in probe["calls"]]
    assert ts == [float(t) for t in trailing(10)], ts
    assert math.isclose(probe["calls"][0]["sigma"][0], ZTSNR_SIGMA_MAX, abs_tol=0.01)
    for c, t in zip(probe["calls"], trailing(10), strict=True):
        assert math.isclose(c["sigma"][0], ztsnr_sigma(t), rel_tol=1e-4), (c["sigma"][0], t)
    assert "VPred ZTSNR: built-in" in infotext(out), infotext(out)
    assert_stock_after(probe)


def test_eps_twin_is_byte_identical_to_a_forge_without_the_extension():
    """The literal baseline: a second Forge started without sd-webui-vpred (``tools/host.py start forge
    --no-extension`` on another port) gives the same pixels for the eps twin as this one with the extension."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "VPRED_FORGE_PORT": os.environ.get("VPRED_FORGE_BASELINE_PORT", "7864")}
    host = [sys.executable, str(repo / "tools" / "host.py")]
    started = subprocess.run([*host, "start", "forge", "--no-extension"], env=env, capture_output=True, text=True)
    assert started.returncode == 0, started.stderr[-3000:]
    baseline_url = started.stdout.strip().splitlines()[-1]
    try:
        body = {**SMALL, "steps": 4, "override_settings": {"sd_model_checkpoint": EPS}}
        status, scripts = call("/sdapi/v1/scripts", base=baseline_url)
        assert "vpred" not in scripts["txt2img"]  # really without the extension
        status, out = call("/sdapi/v1/txt2img", body, base=baseline_url)
        assert status == 200, out
        with_ext, _ = generate(EPS, steps=4)
        assert pixels(with_ext) == pixels(out)
    finally:
        subprocess.run([*host, "stop", "forge"], env=env, capture_output=True, text=True)
