"""Shared helpers of the glue tests (this module holds no tests; its name only follows the ``test_*`` file ownership).

Everything the glue tests compare against is computed here independently of ``lib_vpred``: the zero-terminal-SNR
table (Algorithm 1 of arXiv 2305.08891, float64), diffusers' trailing timesteps, the k-diffusion v scalings and the
WebUI's CFG combine formula. :class:`ReferencePipeline` is a second, independent implementation of "ZTSNR + trailing
(+ CFG rescale through diffusers' ``rescale_noise_cfg``)" installed on a stand-in *without* the extension.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from typing import Any

import numpy as np
import pytest
import torch

#: The stand-in modules each test file needs, captured right after a stand-in is created (``sys.modules`` is
#: replaced by the next ``make_webui`` call).
STUB_MODULES = (
    "script_callbacks",
    "sd_samplers_cfg_denoiser",
    "sd_samplers_common",
    "sd_samplers_kdiffusion",
    "sd_samplers_timesteps",
    "sd_samplers_lcm",
    "sd_samplers",
    "processing",
    "prompt_parser",
    "sd_schedulers",
)

#: Issue item 10 says timestep samplers (DDIM) run unchanged on v checkpoints. Supporting them
#: (``lib_vpred.webui.timestep_glue``, tested in test_timestep_samplers.py) supersedes that: those cases are then moot.
TIMESTEP_SUPPORTED = importlib.util.find_spec("lib_vpred.webui.timestep_glue") is not None
SKIP_IF_TIMESTEP_SUPPORTED = pytest.mark.skipif(
    TIMESTEP_SUPPORTED, reason="timestep samplers are handled by lib_vpred.webui.timestep_glue (item 10 superseded)"
)

#: The terminal alpha-bar every UI uses to keep sigma_max finite (A1111 sd_models.py:643, ComfyUI).
TERMINAL_ALPHA_BAR = 4.8973451890853435e-08
SIGMA_MAX_ZTSNR = math.sqrt((1 - TERMINAL_ALPHA_BAR) / TERMINAL_ALPHA_BAR)  # 4518.76...
SIGMA_MAX_SD = 14.614642

INFOTEXT_KEYS = ("VPred prediction", "VPred ZTSNR", "VPred spacing", "VPred CFG rescale")

# Models used across the tests: (name, add_model kwargs). No name contains a v-pred/ZTSNR file-name hint.
V_SD1 = ("fluffy", {"parameterization": "v", "yaml_v": True})
EPS_SD1 = ("plain15", {})
V_SDXL_KEYS = ("noobxl", {"family": "SDXL", "parameterization": "eps", "keys": ("v_pred", "ztsnr")})
EPS_SDXL = ("basexl", {"family": "SDXL"})


def new_webui(make_webui, with_extension: bool = True, models=(V_SD1,)):
    """A fresh stand-in with ``models`` registered (the first one loaded) and ``w.mods`` holding its modules."""
    w = make_webui(with_extension)
    w.mods = types.SimpleNamespace(**{name: sys.modules[f"modules.{name}"] for name in STUB_MODULES})
    w.models = {}
    for name, kwargs in models:
        w.models[name] = w.add_model(name, **dict(kwargs))
    return w


def pair(make_webui, models=(V_SD1,)):
    """(with extension, without extension), same models, created in that order."""
    return new_webui(make_webui, True, models), new_webui(make_webui, False, models)


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``torch.equal`` on the raw bytes: also true for identical NaNs (same dtype, shape and bits)."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    )


def images(processed) -> torch.Tensor:
    return torch.stack(list(processed.images))


def infotext(processed) -> dict[str, str]:
    """The first image's infotext parsed back into a dict (``"k: v, k: v"``)."""
    out = {}
    text = processed.infotexts[0]
    if not text:
        return out
    for part in text.split(", "):
        key, _, value = part.partition(": ")
        out[key] = value
    return out


def vpred_keys(processed) -> dict[str, str]:
    return {k: v for k, v in infotext(processed).items() if k.startswith("VPred")}


def call_timesteps(model) -> list[float]:
    """The timestep of every ``apply_model`` call (one batched call per CFG step; all rows share t)."""
    out = []
    for t in model.calls:
        assert torch.all(t == t[0]), t
        out.append(float(t[0]))
    return out


# --- independent schedule maths -------------------------------------------------------------------------------------


def ztsnr_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 (arXiv 2305.08891) on sqrt(alpha_bar) in float64, last alpha_bar clamped, as k-diffusion sigmas."""
    a = alphas_cumprod.detach().to(torch.float64)
    s = a.sqrt()
    s_first, s_last = s[0].item(), s[-1].item()
    s = (s - s_last) * s_first / (s_first - s_last)
    abar = s**2
    abar[-1] = TERMINAL_ALPHA_BAR
    return ((1 - abar) / abar).sqrt().to(torch.float32)


def kdiffusion_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The table ``CompVisDenoiser`` builds from a model's alphas_cumprod (external.py: ((1 - a) / a) ** 0.5)."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def trailing_timesteps(steps: int) -> list[int]:
    """diffusers ``timestep_spacing="trailing"`` (numpy, as in DDIMScheduler.set_timesteps)."""
    return (np.round(np.arange(1000, 0, -1000 / steps)).astype(np.int64) - 1).tolist()


def trailing_sigma_schedule(table: torch.Tensor, steps: int) -> torch.Tensor:
    return torch.cat([table[trailing_timesteps(steps)], table.new_zeros(1)])


# --- independent CFG maths (float64) ---------------------------------------------------------------------------------


def webui_combine(x_out: torch.Tensor, conds_list, batch: int, scale: float) -> torch.Tensor:
    """``combine_denoised`` of the WebUI (cfg_denoiser.py:74): uncond_i + sum_k w_k * scale * (cond_k - uncond_i)."""
    x_out = x_out.to(torch.float64)
    uncond = x_out[-batch:]
    out = uncond.clone()
    for i, conds in enumerate(conds_list):
        for index, weight in conds:
            out[i] += (x_out[index] - uncond[i]) * (weight * scale)
    return out


def v_scalings(sigma: torch.Tensor):
    """k-diffusion ``DiscreteVDDPMDenoiser.get_scalings`` with sigma_data = 1, per sample, float64, [B,1,1,1]."""
    s = sigma.to(torch.float64).reshape(-1, 1, 1, 1)
    c_skip = 1 / (s**2 + 1)
    c_out = -s / (s**2 + 1) ** 0.5
    return c_skip, c_out


def v_from_denoised(x, sigma, denoised):
    """D = c_skip x + c_out v  =>  v = (D - c_skip x) / c_out."""
    c_skip, c_out = v_scalings(sigma)
    return (denoised.to(torch.float64) - c_skip * x.to(torch.float64)) / c_out


def denoised_from_v(x, sigma, v):
    c_skip, c_out = v_scalings(sigma)
    return c_skip * x.to(torch.float64) + c_out * v


def rescale_noise_cfg(noise_cfg, noise_pred_text, guidance_rescale):
    """diffusers' ``rescale_noise_cfg`` (imported lazily: diffusers is slow to import)."""
    from diffusers.guiders.guider_utils import rescale_noise_cfg as diffusers_rescale

    return diffusers_rescale(noise_cfg, noise_pred_text, guidance_rescale=guidance_rescale)


def expected_rescaled(x_in, sigma_in, x_out, conds_list, cond_scale, phi):
    """Plain CFG (WebUI formula), to v (k-diffusion scalings), diffusers' rescale, back to denoised; float64."""
    batch = len(conds_list)
    x, sigma = x_in[-batch:], sigma_in[-batch:]
    cfg = webui_combine(x_out, conds_list, batch, cond_scale)
    positive = webui_combine(x_out, conds_list, batch, 1.0)
    v_cfg = v_from_denoised(x, sigma, cfg)
    v_pos = v_from_denoised(x, sigma, positive)
    return denoised_from_v(x, sigma, rescale_noise_cfg(v_cfg, v_pos, phi))


# --- recording ---------------------------------------------------------------------------------------------------


class Recorder:
    """Records every CFG step of a stand-in through its own callbacks (registered after the extension's)."""

    def __init__(self, w):
        self.w = w
        self.steps: list[dict[str, Any]] = []
        w.mods.script_callbacks.on_cfg_denoiser(self._before)
        w.mods.script_callbacks.on_cfg_after_cfg(self._after)

    def _before(self, params):
        d = params.denoiser
        # None right after a refiner switch that nobody re-planned: build it now, as forward() does next anyway
        wrap = d.model_wrap if d.model_wrap is not None else d.inner_model
        sigmas = getattr(wrap, "sigmas", None)
        self.steps.append(
            {
                "denoiser": d,
                "sampler": d.sampler,
                "wrapper": wrap,
                "wrapper_type": type(wrap).__name__,
                "sigmas": None if sigmas is None else sigmas.detach().clone(),
                "x": params.x.detach().clone(),
                "sigma": params.sigma.detach().clone(),
                "model": self.w.shared.sd_model,
                "parameterization": self.w.shared.sd_model.parameterization,
                "override": d.p.sampler_noise_scheduler_override,
                "is_hr_pass": d.p.is_hr_pass,
            }
        )

    def _after(self, params):
        self.steps[-1]["denoised"] = params.x.detach().clone()

    def samplers(self) -> list:
        """Distinct sampler objects, in order of first use."""
        out = []
        for s in self.steps:
            if not any(s["sampler"] is o for o in out):
                out.append(s["sampler"])
        return out


def spy_combine(monkeypatch, w) -> list[dict[str, Any]]:
    """Record every ``CFGDenoiser.combine_denoised`` call (class-level spy; the extension wraps the bound method)."""
    cls = w.mods.sd_samplers_cfg_denoiser.CFGDenoiser
    original = cls.combine_denoised
    calls: list[dict[str, Any]] = []

    def spy(self, x_out, conds_list, uncond, cond_scale):
        out = original(self, x_out, conds_list, uncond, cond_scale)
        calls.append(
            {
                "x_out": x_out.detach().clone(),
                "conds_list": [list(c) for c in conds_list],
                "uncond_rows": uncond.shape[0],
                "cond_scale": cond_scale,
                "plain": out.detach().clone(),
            }
        )
        return out

    monkeypatch.setattr(cls, "combine_denoised", spy)
    return calls


# --- global state --------------------------------------------------------------------------------------------------


def _watched_classes(w, model) -> list[type]:
    import k_diffusion.external

    m = w.mods
    return [
        m.sd_samplers_cfg_denoiser.CFGDenoiser,
        m.sd_samplers_kdiffusion.CFGDenoiserKDiffusion,
        m.sd_samplers_kdiffusion.KDiffusionSampler,
        m.sd_samplers_common.Sampler,
        m.sd_samplers_timesteps.CFGDenoiserTimesteps,
        m.sd_samplers_timesteps.CompVisSampler,
        m.sd_samplers_timesteps.CompVisTimestepsDenoiser,
        m.sd_samplers_timesteps.CompVisTimestepsVDenoiser,
        m.sd_samplers_lcm.LCMSampler,
        m.processing.StableDiffusionProcessing,
        m.processing.StableDiffusionProcessingTxt2Img,
        m.processing.StableDiffusionProcessingImg2Img,
        k_diffusion.external.DiscreteSchedule,
        k_diffusion.external.DiscreteEpsDDPMDenoiser,
        k_diffusion.external.DiscreteVDDPMDenoiser,
        k_diffusion.external.CompVisDenoiser,
        k_diffusion.external.CompVisVDenoiser,
        torch.nn.Module,
        type(model),
    ]


class GlobalState:
    """Everything global a generation could leave changed: the models' schedules and attributes, the classes and
    modules the samplers come from, options and callbacks. ``assert_unchanged`` compares by identity and value."""

    def __init__(self, w):
        import k_diffusion.external
        import k_diffusion.sampling

        self.w = w
        self.models = list(w.models.values())
        self.per_model = []
        for model in self.models:
            self.per_model.append(
                {
                    "alphas": model.alphas_cumprod,
                    "alphas_values": model.alphas_cumprod.clone(),
                    "original": model.alphas_cumprod_original,
                    "original_values": model.alphas_cumprod_original.clone(),
                    "parameterization": model.parameterization,
                    "attrs": set(vars(model)),
                }
            )
        self.classes = {cls: dict(vars(cls)) for cls in _watched_classes(w, self.models[0])}
        self.module_dicts = {
            mod: dict(vars(mod))
            for mod in (
                k_diffusion.sampling,
                k_diffusion.external,
                w.mods.sd_samplers_kdiffusion,
                w.mods.sd_samplers_cfg_denoiser,
                w.mods.sd_samplers_common,
            )
        }
        self.opts = dict(w.shared.opts.data)
        self.sd_model = w.shared.sd_model
        self.callbacks = {k: list(v) for k, v in w.mods.script_callbacks.callback_map.items()}

    def assert_unchanged(self, *, sd_model_same: bool = True) -> None:
        for model, before in zip(self.models, self.per_model, strict=True):
            name = model.sd_checkpoint_info.name
            assert torch.equal(model.alphas_cumprod, before["alphas_values"]), f"{name}: alphas_cumprod changed"
            assert model.alphas_cumprod.dtype == before["alphas_values"].dtype
            assert model.alphas_cumprod_original is before["original"], f"{name}: alphas_cumprod_original replaced"
            assert torch.equal(model.alphas_cumprod_original, before["original_values"])
            assert model.parameterization == before["parameterization"], f"{name}: parameterization changed"
            assert set(vars(model)) == before["attrs"], f"{name}: attributes added/removed"
            leftovers = [a for a in dir(model) if "vpred" in a.lower()]
            assert not leftovers, f"{name}: {leftovers}"
        for cls, before in self.classes.items():
            after = dict(vars(cls))
            assert after.keys() == before.keys(), f"{cls.__qualname__}: class attributes added/removed"
            changed = [k for k in before if after[k] is not before[k]]
            assert not changed, f"{cls.__qualname__}: {changed} replaced at class level"
            assert not [a for a in dir(cls) if "vpred" in a.lower()], cls
        for mod, before in self.module_dicts.items():
            after = dict(vars(mod))
            assert after.keys() == before.keys(), mod.__name__
            assert not [k for k in before if after[k] is not before[k]], f"{mod.__name__}: globals replaced"
        assert self.w.shared.opts.data == self.opts
        if sd_model_same:
            assert self.w.shared.sd_model is self.sd_model
        now = self.w.mods.script_callbacks.callback_map
        assert {k: list(v) for k, v in now.items()} == self.callbacks, "callbacks registered or removed"


# --- an independent reference pipeline on a stand-in without the extension ------------------------------------------


class ReferencePipeline:
    """ZTSNR table + trailing spacing (+ CFG rescale in v space via diffusers) for v models, written from the paper,
    installed on a stand-in WITHOUT the extension as an always-on script. Nothing here comes from ``lib_vpred``."""

    alwayson = True
    filename = "reference.py"
    args_from = 1
    args_to = 1

    def __init__(self, w, phi: float = 0.0):
        assert w.script_module is None, "the reference runs without the extension"
        self.w = w
        self.phi = phi
        w.mods.script_callbacks.on_cfg_denoiser(self._capture)
        for runner in w.runners.values():
            runner.alwayson_scripts.append(self)

    def _capture(self, params):
        params.denoiser.reference_inputs = (params.x, params.sigma)

    def before_process(self, p):
        pass

    def process(self, p):
        pass

    def before_hr(self, p):
        pass

    def postprocess(self, p, processed):
        p.sampler_noise_scheduler_override = None

    def process_before_every_sampling(self, p, **kwargs):
        model = self.w.shared.sd_model
        if model.parameterization != "v":
            p.sampler_noise_scheduler_override = None
            return
        table = ztsnr_sigmas(model.alphas_cumprod_original)
        mw = p.sampler.model_wrap
        mw.sigmas = table
        mw.log_sigmas = table.log()
        p.sampler_noise_scheduler_override = lambda steps: trailing_sigma_schedule(table, steps)
        if self.phi > 0:
            cfg = p.sampler.model_wrap_cfg
            original = cfg.combine_denoised
            phi = self.phi

            def combine(x_out, conds_list, uncond, cond_scale):
                plain = original(x_out, conds_list, uncond, cond_scale)
                x_in, sigma_in = cfg.reference_inputs
                out = expected_rescaled(x_in, sigma_in, x_out, conds_list, cond_scale, phi)
                return out.to(plain.dtype)

            cfg.combine_denoised = combine
