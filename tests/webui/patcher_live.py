"""The live checks of the extension on the patcher-based hosts (Forge, reForge), shared by ``test_live_forge.py`` and
``test_live_reforge.py``: a base class whose ``test_*`` methods run against one host (``call`` for its HTTP API), with
the full-size random SD1.5 twins ``sd15-v`` (+ YAML, ``parameterization: "v"``) and ``sd15-eps`` (same tensors, no
YAML) and the probe extension (``tests/webui/probe``: the sigma and UNet timestep of every model call, the tensors of
chosen calls, the shared sigma table before / during / after each generation).

Golden values come from an independent computation: the ZTSNR table and the trailing timesteps from diffusers'
``DDIMScheduler`` (``rescale_betas_zero_snr=True``, ``timestep_spacing="trailing"``) with the terminal alpha-bar kept
finite as the WebUI does (4.8973451890853435e-08); CFG rescale recomputed in float64 from the probe's captured x,
sigma, cond and uncond predictions with Algorithm 2 written out in v (not with ``lib_vpred``).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from tests.webui.forge_client import STOCK_SIGMA_MAX, STOCK_SIGMA_MIN, tensor

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
REPO = Path(__file__).resolve().parents[2]

# --- independent references -------------------------------------------------------------------------------------------

_CACHE: dict[str, Any] = {}


def ztsnr_sigma(t: int) -> float:
    """sigma(t) of the SD scaled-linear schedule rescaled to zero terminal SNR, from diffusers (independent)."""
    if "table" not in _CACHE:
        from diffusers import DDIMScheduler

        s = DDIMScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True
        )
        abar = s.alphas_cumprod.to(torch.float64).clone()
        abar[-1] = TERMINAL_ALPHA_BAR
        _CACHE["table"] = ((1 - abar) / abar).sqrt().tolist()
    return _CACHE["table"][t]


def trailing(steps: int) -> list[int]:
    """diffusers' trailing timesteps (paper Table 2), descending."""
    from diffusers import DDIMScheduler

    s = DDIMScheduler(beta_schedule="scaled_linear", rescale_betas_zero_snr=True, timestep_spacing="trailing")
    s.set_timesteps(steps)
    return [int(t) for t in s.timesteps]


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

    # ``cond`` is the host's weighted mean of the AND sub-prompts; A1111's CFG sums them: uncond + sum_i w_i s (c_i -
    # u), i.e. the positive prediction (CFG at scale 1) is uncond + W (mean - uncond) with W the weight sum
    v_cond, v_neg = v_of(cond), v_of(uncond)
    v_pos = v_neg + weights * (v_cond - v_neg)
    v_cfg = v_neg + scale * (v_pos - v_neg)
    dims = tuple(range(1, x.ndim))
    ratio = v_pos.std(dim=dims, keepdim=True) / v_cfg.std(dim=dims, keepdim=True)
    v_final = phi * (v_cfg * ratio) + (1 - phi) * v_cfg
    return math.sqrt(abar) * x_vp - math.sqrt(1 - abar) * v_final


def infotext(out: dict[str, Any]) -> str:
    return out["info"]["infotexts"][0]


def pixels(out: dict[str, Any]) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(out["images"][0]))) as image:
        return image.convert("RGB").tobytes()


# --- the checks -------------------------------------------------------------------------------------------------------


class PatcherLiveChecks:
    """Live checks for one patcher-based host. Subclasses (``Test...``) set the host's client and names."""

    #: the host key of ``tools/host.py`` and its port variable (for a second instance without the extension)
    host_key = ""
    port_env = ""
    #: the probe's name for the eps prediction type
    eps_name = "epsilon"
    #: extra txt2img fields the host needs for the hires pass
    hires_fields: ClassVar[dict[str, Any]] = {}

    def call(self, path: str, body: dict[str, Any] | None = None, base: str | None = None) -> tuple[int, Any]:
        raise NotImplementedError

    # helpers

    def generate(
        self, checkpoint: str, vpred: Any = None, kind: str = "txt2img", capture: Any = (0,), **fields: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """One generation; returns (the API answer with its info decoded, the probe's record)."""
        extra = fields.pop("override_settings_extra", {})
        body = {**SMALL, **fields, "override_settings": {"sd_model_checkpoint": checkpoint, **extra}}
        if vpred is not None:
            body["alwayson_scripts"] = {"vpred": {"args": vpred}}

        def run() -> dict[str, Any]:
            """Reset the probe, generate, decode the info."""
            status, reset = self.call(
                "/vpred-probe/v1/reset", {"capture": capture if capture == "all" else list(capture)}
            )
            assert status == 200, reset
            status, out = self.call(f"/sdapi/v1/{kind}", body)
            assert status == 200, out
            out["info"] = json.loads(out["info"])
            return out

        out = run()
        if out["info"]["sd_model_name"] != checkpoint:
            # The WebUI keeps an overridden sd_model_checkpoint option its config file lacks, and skips the switch
            # when the option already names the checkpoint while the twin (same hash) is loaded: flip it for real.
            other = EPS if checkpoint == V else V
            for name in (other, checkpoint):
                status, answer = self.call("/sdapi/v1/options", {"sd_model_checkpoint": name})
                assert status == 200, answer
            out = run()
        assert out["info"]["sd_model_name"] == checkpoint
        status, probe = self.call("/vpred-probe/v1/last")
        assert status == 200, probe
        assert not probe.get("errors"), probe["errors"]
        return out, probe

    def assert_stock_after(self, probe: dict[str, Any]) -> None:
        after = probe["sigmas_after"]
        assert after["n"] == 1000
        assert math.isclose(after["min"], STOCK_SIGMA_MIN, rel_tol=1e-4), after
        assert math.isclose(after["max"], STOCK_SIGMA_MAX, rel_tol=1e-6), after
        assert after == probe["sigmas_before"]

    def assert_trailing_ztsnr(self, probe: dict[str, Any], steps: int) -> None:
        ts = [c["t"][0] for c in probe["calls"]]
        want = trailing(steps)
        assert ts == [float(t) for t in want], ts
        for c, t in zip(probe["calls"], want, strict=True):
            assert math.isclose(c["sigma"][0], ztsnr_sigma(t), rel_tol=1e-4), (c["sigma"][0], t, ztsnr_sigma(t))

    @pytest.fixture(scope="class")
    @classmethod
    def euler_v(cls) -> tuple[dict[str, Any], dict[str, Any]]:
        return cls().generate(V, steps=10, capture=(0, 5))

    # tests

    def test_host_is_supported_and_says_so(self):
        status, out = self.call("/vpred/v1/status")
        assert status == 200, out
        assert out.get("supported", True), out
        status, scripts = self.call("/sdapi/v1/scripts")
        assert "vpred" in scripts["txt2img"]
        assert "vpred" in scripts["img2img"]
        status, schedulers = self.call("/sdapi/v1/schedulers")
        assert "Trailing" in [s["label"] for s in schedulers]

    def test_euler_starts_at_the_ztsnr_sigma_max_and_follows_the_trailing_sigmas(self, euler_v):
        out, probe = euler_v
        assert trailing(10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
        assert math.isclose(probe["calls"][0]["sigma"][0], ZTSNR_SIGMA_MAX, abs_tol=0.01)
        self.assert_trailing_ztsnr(probe, 10)  # sampler sigma and UNet timestep agree, step by step
        assert probe["sigmas_during"]["max"] == pytest.approx(ZTSNR_SIGMA_MAX, abs=0.01)
        self.assert_stock_after(probe)
        text = infotext(out)
        for key in ("VPred prediction: v-prediction (auto)", "VPred ZTSNR: on (auto)", "VPred spacing: trailing"):
            assert key in text, text
        assert "VPred CFG rescale: 0.7" in text

    def test_auto_spacing_gives_dpmpp_2m_exponential_sigmas_from_sigma_max(self):
        """Timestep spacing Auto (the default) with DPM++ 2M: one model call per step at sigmas log-even from the ZTSNR
        sigma_max (t = 999) to its sigma_min (both from diffusers' table), the UNet's last t near 0; the same image as
        the host's own Exponential schedule type with ``Timestep spacing: Schedule type``, another than trailing."""
        out, probe = self.generate(V, steps=4, sampler_name="DPM++ 2M", scheduler="Karras")
        lo, hi = math.log(ztsnr_sigma(0)), math.log(ztsnr_sigma(999))
        want = [math.exp(hi + i * (lo - hi) / 3) for i in range(4)]
        got = [c["sigma"][0] for c in probe["calls"]]
        assert got == pytest.approx(want, rel=1e-4), got
        assert probe["calls"][0]["t"][0] == pytest.approx(999, abs=1e-3)
        assert probe["calls"][-1]["t"][0] < 1.0
        assert "VPred spacing: exponential (auto)" in infotext(out)
        self.assert_stock_after(probe)
        own, _ = self.generate(
            V,
            vpred=[True, "Auto", "Auto", "Schedule type", 0.7],
            steps=4,
            sampler_name="DPM++ 2M",
            scheduler="Exponential",
        )
        trailing_out, trailing_probe = self.generate(
            V, vpred=[True, "Auto", "Auto", "Trailing", 0.7], steps=4, sampler_name="DPM++ 2M"
        )
        assert pixels(own) == pixels(out)
        assert pixels(trailing_out) != pixels(out)
        self.assert_trailing_ztsnr(trailing_probe, 4)

    @pytest.mark.parametrize("index", [0, 5])
    def test_cfg_rescale_equals_an_independent_v_space_recomputation(self, euler_v, index):
        _, probe = euler_v
        call_ = probe["calls"][index]
        assert call_["post_cfg_functions"] == 1  # ours, on the pass's cloned patcher
        t = call_["tensors"]
        x, cond, uncond, result = (as_tensor(t[k]) for k in ("x", "cond_pred", "uncond_pred", "result"))
        want = cfg_rescale_reference(x, call_["sigma"][0], cond, uncond, call_["cond_scale"], 0.7)
        plain = uncond + call_["cond_scale"] * (cond - uncond)
        scale = want.abs().max().item()
        assert (result - want).abs().max().item() <= 2e-4 * scale, (result - want).abs().max()
        assert (result - plain).abs().max().item() > 1e-3 * scale  # the rescale did something

    def test_phi_zero_is_plain_cfg_and_differs_from_phi_07(self, euler_v):
        out7, _ = euler_v
        out0, probe = self.generate(V, [True, "Auto", "Auto", "Trailing", 0.0], steps=10)
        first = probe["calls"][0]
        assert first["post_cfg_functions"] == 0
        t = first["tensors"]
        cond, uncond, result = (as_tensor(t[k]) for k in ("cond_pred", "uncond_pred", "result"))
        plain = uncond + first["cond_scale"] * (cond - uncond)
        assert (result - plain).abs().max().item() <= 1e-5 * plain.abs().max().item()
        assert pixels(out0) != pixels(out7)
        assert "VPred CFG rescale: 0.0" in infotext(out0)

    def test_and_prompts_rescale_against_the_sum_of_the_sub_prompts(self):
        """``a cat AND a dog``: two sub-prompts of weight 1; the positive prediction is uncond + 2 (mean - uncond)."""
        _, probe = self.generate(V, steps=3, prompt="a cat AND a dog")
        call_ = probe["calls"][0]
        t = call_["tensors"]
        x, cond, uncond, result = (as_tensor(t[k]) for k in ("x", "cond_pred", "uncond_pred", "result"))
        args = (x, call_["sigma"][0], cond, uncond, call_["cond_scale"], 0.7)
        want, wrong = cfg_rescale_reference(*args, weights=2), cfg_rescale_reference(*args, weights=1)
        scale = want.abs().max().item()
        assert (result - want).abs().max().item() <= 2e-4 * scale
        assert (result - wrong).abs().max().item() > 1e-3 * scale  # the weights matter: the test can tell

    def test_ddim_starts_at_t999_with_one_call_per_step_and_matches_eulers_first_x0(self, euler_v):
        """DDIM in v form: ``steps`` calls at the trailing timesteps; its first call sees the same noisy latent as
        Euler's (x = noise * sqrt(sigma_max^2 + 1) vs noise * sigma_max: 2.4e-8 apart), so the first denoised
        prediction is the same up to float32 rounding (first-order equivalence of the two samplers)."""
        out, probe = self.generate(V, steps=10, sampler_name="DDIM")
        self.assert_trailing_ztsnr(probe, 10)
        _, euler = euler_v
        ddim_x0 = as_tensor(probe["calls"][0]["tensors"]["result"])
        euler_x0 = as_tensor(euler["calls"][0]["tensors"]["result"])
        assert torch.isfinite(ddim_x0).all()
        assert (ddim_x0 - euler_x0).abs().max().item() <= 1e-3 * euler_x0.abs().max().item()
        self.assert_stock_after(probe)
        assert "VPred spacing: trailing" in infotext(out)

    @pytest.mark.parametrize(("sampler", "calls"), [("PLMS", 4), ("UniPC", 4)])
    def test_plms_and_unipc_start_at_t999_in_v_form(self, sampler, calls):
        """The other timestep samplers through the same v loop: the first call at t = 999 (σ 4518.76), the sampler's
        σ and the UNet's t agree on every call, finite results, the stock table afterwards. ``steps`` model calls for
        both, as on A1111 (PLMS spends two of them on its first, Heun-like step: t = 999, 666, 666, 332)."""
        out, probe = self.generate(V, steps=4, sampler_name=sampler, capture="all")
        ts = [c["t"][0] for c in probe["calls"]]
        assert len(ts) == calls, ts
        assert ts[0] == 999.0, ts
        assert math.isclose(probe["calls"][0]["sigma"][0], ZTSNR_SIGMA_MAX, abs_tol=0.01)
        for c in probe["calls"]:
            t = int(c["t"][0])
            assert math.isclose(c["sigma"][0], ztsnr_sigma(t), rel_tol=1e-3), (c["sigma"][0], t)
            assert torch.isfinite(as_tensor(c["tensors"]["result"])).all()
        self.assert_stock_after(probe)
        assert "VPred spacing: trailing" in infotext(out)

    def test_img2img_half_strength_starts_midway_and_hires_runs_two_passes(self, euler_v):
        txt, _ = euler_v
        _, probe = self.generate(V, kind="img2img", steps=10, init_images=[txt["images"][0]], denoising_strength=0.5)
        ts = [c["t"][0] for c in probe["calls"]]
        assert 499 <= ts[0] <= 599, ts  # the WebUI's img2img convention: t_enc + 1 trailing steps
        assert ts == [float(t) for t in trailing(10) if t <= ts[0]], ts
        for c in probe["calls"]:
            assert math.isclose(c["sigma"][0], ztsnr_sigma(int(c["t"][0])), rel_tol=1e-4)
        self.assert_stock_after(probe)

        out, probe = self.generate(
            V,
            steps=4,
            enable_hr=True,
            hr_scale=1.5,
            hr_second_pass_steps=4,
            denoising_strength=0.5,
            hr_upscaler="Latent",
            **self.hires_fields,
        )
        passes = sorted({c["pass"] for c in probe["calls"]})
        assert len(passes) == 2, passes
        first = [c["t"][0] for c in probe["calls"] if c["pass"] == passes[0]]
        second = [c["t"][0] for c in probe["calls"] if c["pass"] == passes[1]]
        assert first[0] == 999.0
        assert second[0] < 999.0
        assert all(c["post_cfg_functions"] <= 1 for c in probe["calls"])  # the hook ran twice: installed once
        self.assert_stock_after(probe)
        assert "VPred spacing: trailing" in infotext(out)

    def test_an_interrupted_generation_leaves_the_stock_table(self):
        done: dict[str, Any] = {}

        def run() -> None:
            done["result"] = self.generate(V, steps=30, capture=())

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status, progress = self.call("/sdapi/v1/progress?skip_current_image=true")
            if status == 200 and (progress.get("state") or {}).get("sampling_step", 0) >= 2:
                break
            time.sleep(0.3)
        self.call("/sdapi/v1/interrupt", {})
        worker.join(timeout=600)
        _, probe = done["result"]
        assert len(probe["calls"]) < 30, len(probe["calls"])  # it really was interrupted
        assert probe["sigmas_during"]["max"] == pytest.approx(ZTSNR_SIGMA_MAX, abs=0.01)
        self.assert_stock_after(probe)

    @pytest.mark.parametrize(
        ("args", "field"),
        [([{"cfg_rescale": 1.5}], "cfg_rescale"), ([True, "maybe"], "prediction"), (["yes"], "enabled")],
    )
    def test_bad_input_is_a_422_naming_the_field(self, args, field):
        body = {
            **SMALL,
            "steps": 2,
            "override_settings": {"sd_model_checkpoint": V},
            "alwayson_scripts": {"vpred": {"args": args}},
        }
        status, out = self.call("/sdapi/v1/txt2img", body)
        assert status == 422, out
        assert field in json.dumps(out)

    def test_the_hosts_own_ztsnr_option_is_used_once_and_recorded(self):
        """The host's "Zero Terminal SNR" noise schedule swaps its own table in around sampling: the extension sees a
        ZTSNR table, installs none of its own, and the schedule is the trailing ZTSNR one (not rescaled twice)."""
        try:
            out, probe = self.generate(V, steps=4, override_settings_extra={"sd_noise_schedule": "Zero Terminal SNR"})
        finally:
            # the WebUI restores only overridden options its config file holds: put it back ourselves
            self.call("/sdapi/v1/options", {"sd_noise_schedule": "Default"})
        self.assert_trailing_ztsnr(probe, 4)
        assert "VPred ZTSNR: built-in" in infotext(out), infotext(out)
        self.assert_stock_after(probe)

    def test_eps_twin_is_unchanged_and_byte_identical_enabled_or_disabled(self):
        enabled, probe = self.generate(EPS, steps=4)
        disabled, probe_off = self.generate(EPS, [False], steps=4)
        assert pixels(enabled) == pixels(disabled)
        for p in (probe, probe_off):
            assert p["prediction_type"] == self.eps_name
            assert all(c["post_cfg_functions"] == 0 for c in p["calls"])
            assert p["sigmas_during"] == p["sigmas_before"] == p["sigmas_after"]
        assert "VPred" not in infotext(enabled)

    def test_eps_twin_is_byte_identical_to_the_host_without_the_extension(self):
        """The literal baseline: a second instance started without sd-webui-vpred (``tools/host.py start HOST
        --no-extension`` on another port) gives the same pixels for the eps twin as this one with the extension."""
        env = {**os.environ, self.port_env: os.environ.get("VPRED_BASELINE_PORT", "7869")}
        host = [sys.executable, str(REPO / "tools" / "host.py")]
        started = subprocess.run(
            [*host, "start", self.host_key, "--no-extension"], env=env, capture_output=True, text=True
        )
        assert started.returncode == 0, started.stderr[-3000:]
        baseline = started.stdout.strip().splitlines()[-1]
        try:
            body = {**SMALL, "steps": 4, "override_settings": {"sd_model_checkpoint": EPS}}
            status, scripts = self.call("/sdapi/v1/scripts", base=baseline)
            assert "vpred" not in scripts["txt2img"]  # really without the extension
            status, out = self.call("/sdapi/v1/txt2img", body, base=baseline)
            assert status == 200, out
        finally:
            subprocess.run([*host, "stop", self.host_key], env=env, capture_output=True, text=True)
        with_ext, _ = self.generate(EPS, steps=4)
        assert pixels(with_ext) == pixels(out)


def client(call: Callable[..., tuple[int, Any]]) -> Callable[..., tuple[int, Any]]:
    """A ``call`` method for a check class from a client module's function."""

    def method(self: Any, path: str, body: dict[str, Any] | None = None, base: str | None = None) -> Any:
        return call(path, body, base=base)

    return method
