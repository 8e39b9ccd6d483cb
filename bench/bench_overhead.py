"""Benchmark: the extension's per-step and per-pass cost against the UNet step it rides on, on CPU or a CUDA GPU.

    python bench/bench_overhead.py [--device cpu|cuda] [--quick] [--webui-url http://127.0.0.1:7860]

One run measures side by side, figures printed and never asserted (``--device cuda``: every timing is
CUDA-synchronised, see "Timing" below):

1. The UNet step: diffusers ``UNet2DConditionModel`` built from the SD1.5 or SDXL architecture config (no download;
   on the meta device, then filled by :func:`fill_random`: random values at PyTorch's default scale), one forward
   under ``torch.inference_mode``. ``--device cuda``: fp16, SD1.5 at 512x512 (latent 64x64) with UNet batch 2,
   SDXL at 1024x1024 (latent 128x128) with batch 2, SD1.5 at 512x512 with batch 8. The UNet batch holds a cond and
   an uncond row per image, so batch 2 is one image and batch 8 four. ``--device cpu`` (the default; small, so it
   ends in about two minutes on a busy 2-core box): fp32, SD1.5 at 128x128 (latent 16x16) with batch 2 and 8, and
   the SDXL latent (128x128, batch 2) for the extension rows only (an fp32 SDXL UNet needs 10 GB; no UNet there).
2. Per step, on the same latents (``x_out`` with one cond and one uncond row per image, fp32 and fp16):
   - the WebUI's own CFG combine (``CFGDenoiser.combine_denoised`` of an untouched denoiser);
   - the k-diffusion family: ``script_callbacks.cfg_denoiser_callback`` (our ``on_cfg_denoiser`` capture) + the
     ``combine_with_rescale`` wrapper, as ``scripts/vpred.py`` installs them on an Euler sampler for a v checkpoint;
     EXTRA = that minus the plain combine (median of paired differences); and its parts: the capture alone,
     ``guidance.positive_prediction`` and ``guidance.rescale_denoised``;
   - the timestep family (DDIM), eps checkpoint with ZTSNR on: the forward capture (``timestep_glue._capture_inputs``
     around a no-op forward) + the ``combine_rescaled`` wrapper (alpha-bar gather + ``guidance.rescale_eps``);
     v checkpoint: the wrapper alone (``guidance.cfg_rescale`` in v); EXTRA for each, and the rescale maths alone;
   - the callback's cost when the extension is inactive (eps checkpoint or disabled).
   Each row: median and min over the samples, % of the UNet step (median over median), and kernel launches per
   step: on CUDA the kernels (and memcpy/memset) the torch profiler sees on the device, on CPU the kernel-launching
   aten ops the CPU profiler sees (``bench/opcount.py``); the op names of each path are printed after the table.
3. Once per pass: ``ztsnr_sigma_table``, ``install_sigma_table``, ``decide``, ``SpacingSchedule(sampler)(steps)``,
   ``model_facts``, ``detect_file`` cached and uncached (a small safetensors checkpoint with a YAML beside it), and
   the script's whole ``process`` + ``process_before_every_sampling`` + ``postprocess`` on a fresh sampler.
4. ``--webui-url`` (loopback only): end to end against a real WebUI with the ``tiny-vpred`` checkpoint
   (tests/webui/README.md): interleaved txt2img requests (64x64, 8 steps, Euler), extension enabled vs disabled.

The WebUI is the glue tier's stand-in (``tests/glue/stub/modules``, v1.10.1 code paths, real k_diffusion) with the
real script loaded, driven as ``tests/glue/conftest.py`` does. Timing: each sample is the wall time of ``--inner``
back-to-back calls divided by their number; on CUDA with ``torch.cuda.synchronize()`` before and after, so a sample
includes the GPU work and, for per-step rows, the launches pipelined as in sampling (the UNet: one call per sample).
Plain and extension runs alternate in a rotating order. On CPU the per-step rows run on one torch thread
(``--step-threads``): on a busy machine every parallel op can wait a whole scheduler time slice at an OpenMP barrier,
which then dominates microsecond figures; the UNet uses torch's threads. ``--quick`` (CI smoke, < 30 s on CPU): a tiny UNet with each
architecture's block layout, tiny latents, one torch thread, marked "(quick: not representative)".
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_T0 = time.perf_counter()  # before the heavy imports (torch, and later k_diffusion, gradio, diffusers)
REPO = Path(__file__).resolve().parents[1]
STUB = REPO / "tests" / "glue" / "stub"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
# k_diffusion imports openai clip, which imports pkg_resources: a deprecation warning on every run, not ours.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

import torch  # noqa: E402
from opcount import count_ops, cuda_kernel_launches  # noqa: E402

from lib_vpred import guidance  # noqa: E402

QUICK_NOTE = "(quick: not representative)"
PHI = 0.7
CFG_SCALE = 7.0
STEPS = 20

#: SD1.5 UNet (``runwayml/stable-diffusion-v1-5`` ``unet/config.json``), built from this dict, never downloaded.
SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}
#: SDXL base UNet (``stabilityai/stable-diffusion-xl-base-1.0`` ``unet/config.json``): 2.57 G parameters; its
#: forward also takes the pooled text embedding (1280) and six size/crop ids (``added_cond_kwargs``).
SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 2048,
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "use_linear_projection": True,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
#: --quick: each layout shrunk ~1000x (not an SD UNet; only keeps the code paths alive).
TINY_SD15_CONFIG: dict[str, Any] = {
    **SD15_UNET_CONFIG,
    "sample_size": 8,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
}
TINY_SDXL_CONFIG: dict[str, Any] = {
    **SDXL_UNET_CONFIG,
    "sample_size": 8,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": (2, 4),
    "transformer_layers_per_block": (1, 2),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 32 + 6 * 8,
}
ARCHS: dict[str, dict[str, Any]] = {"SD1.5": SD15_UNET_CONFIG, "SDXL": SDXL_UNET_CONFIG}
TINY_ARCHS: dict[str, dict[str, Any]] = {"SD1.5": TINY_SD15_CONFIG, "SDXL": TINY_SDXL_CONFIG}


@dataclass(frozen=True)
class Config:
    """One UNet step to compare against: architecture, image size (latent = size / 8) and UNet batch (2 per image)."""

    arch: str
    pixels: int
    batch: int
    unet: bool = True  # False: extension rows only (no UNet on this device)

    @property
    def latent(self) -> int:
        return self.pixels // 8

    @property
    def images(self) -> int:
        return self.batch // 2

    @property
    def label(self) -> str:
        img = "image" if self.images == 1 else "images"
        return f"{self.arch} {self.pixels}x{self.pixels} (latent {self.latent}x{self.latent}), UNet batch {self.batch} ({self.images} {img})"


CUDA_CONFIGS = (Config("SD1.5", 512, 2), Config("SDXL", 1024, 2), Config("SD1.5", 512, 8))
CPU_CONFIGS = (Config("SD1.5", 128, 2), Config("SD1.5", 128, 8), Config("SDXL", 1024, 2, unet=False))
QUICK_CONFIGS = (Config("SD1.5", 64, 2), Config("SDXL", 64, 2), Config("SD1.5", 64, 8))


@dataclass
class Series:
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)


def fmt_time(seconds: float) -> str:
    if abs(seconds) >= 1.0:
        return f"{seconds:.2f} s"
    if abs(seconds) >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def fmt_pct(fraction: float | None) -> str:
    return "" if fraction is None else f"{fraction * 100:.3f} %"


class Clock:
    """Wall time per call of ``fn`` over ``inner`` back-to-back calls; on CUDA between two device synchronisations."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn: Callable[[], object], inner: int = 1) -> float:
        self.sync()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        self.sync()
        return (time.perf_counter() - t0) / inner


def run_round(
    clock: Clock, benches: dict[str, Callable[[], object]], series: dict[str, Series], reps: int, inner: int
) -> None:
    """``reps`` passes over every bench, in an order rotated on each pass (no position bias on a shared machine)."""
    names = list(benches)
    for i in range(reps):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            series.setdefault(name, Series()).times.append(clock.time(benches[name], inner))


def launches(fn: Callable[[], object], device: torch.device) -> float:
    """Kernel launches per call: device kernels on CUDA, kernel-launching aten ops on CPU (``bench/opcount.py``)."""
    if device.type == "cuda":
        return cuda_kernel_launches(fn)
    return float(count_ops(fn).kernel_total)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# --- the WebUI stand-in with the real script loaded --------------------------------------------------------------------


class Glue:
    """``scripts/vpred.py`` loaded against the stand-in modules, with a v and an eps checkpoint registered."""

    def __init__(self, tmp: Path) -> None:
        sys.path.insert(0, str(STUB))
        for name in [n for n in sys.modules if n == "modules" or n.startswith("modules.")]:
            del sys.modules[name]
        from modules import processing, script_callbacks, sd_models, sd_samplers, shared

        from tests.glue.fakemodel import FakeSDModel, write_checkpoint

        self.processing, self.script_callbacks, self.sd_samplers, self.shared = (
            processing,
            script_callbacks,
            sd_samplers,
            shared,
        )
        spec = importlib.util.spec_from_file_location("vpred.py", REPO / "scripts" / "vpred.py")
        self.script_module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.script_module)  # registers on_cfg_denoiser -> hooks.on_cfg_denoiser
        self.hooks = self.script_module.GLUE  # the A1111 adapter (lib_vpred.webui.hooks) under the stand-in
        self.script = self.script_module.VPredScript()
        self.checkpoint = write_checkpoint(tmp, "bench-vpred", family="SD1", yaml_v=True)
        self.model = FakeSDModel(self.checkpoint, parameterization="v")
        self.eps_model = FakeSDModel(write_checkpoint(tmp, "bench-eps", family="SD1"), parameterization="eps")
        sd_models.register(self.model)
        sd_models.register(self.eps_model)
        self.use(self.model)

    def use(self, model: Any) -> None:
        self.shared.sd_model = model
        self.shared.opts.sd_model_checkpoint = model.sd_checkpoint_info.name

    def new_p(self, sampler: str = "Euler", model: Any = None) -> Any:
        model = model or self.model
        self.use(model)
        p = self.processing.StableDiffusionProcessingTxt2Img(sd_model=model, steps=STEPS)
        p.sampler = self.sd_samplers.create_sampler(sampler, model)
        return p

    def run_script_hooks(self, p: Any, prediction: str = "Auto", ztsnr: str = "Auto") -> None:
        """What the WebUI calls on the script for one txt2img pass before sampling."""
        self.script.process(p, True, prediction, ztsnr, "Trailing", PHI)
        self.script.process_before_every_sampling(p)

    def finish(self, p: Any) -> None:
        self.script.postprocess(p, None)
        self.use(self.model)


@dataclass
class StepCase:
    """Inputs of one sampling step at one latent size and dtype, and the benches on them."""

    config: Config
    dtype: torch.dtype
    benches: dict[str, Callable[[], object]]
    checks: list[str]


#: Row labels of the per-step table, by bench key; indented ones are parts of the EXTRA above them.
STEP_ROWS: tuple[tuple[str, str], ...] = (
    ("plain", "WebUI combine_denoised (plain CFG, no extension)"),
    ("kd_extra", "k-diffusion: EXTRA per step = capture + wrapper - plain"),
    ("kd_capture", "  capture callback (on_cfg_denoiser)"),
    ("kd_positive", "  positive_prediction"),
    ("kd_rescale", "  rescale_denoised (v space)"),
    ("ts_eps_extra", "timestep, eps ckpt: EXTRA = capture + wrapper - plain"),
    ("ts_eps_rescale", "  alpha-bar gather + rescale_eps (v space)"),
    ("ts_v_extra", "timestep, v ckpt: EXTRA = wrapper - plain"),
    ("ts_v_rescale", "  cfg_rescale (in v)"),
    ("inactive", "inactive (eps/disabled): callback returns at once"),
)
#: EXTRA rows: (extension bench, the plain bench it is paired with).
EXTRAS = {
    "kd_extra": ("kd_ext", "plain"),
    "ts_eps_extra": ("ts_eps_ext", "plain"),
    "ts_v_extra": ("ts_v_ext", "plain"),
}


def make_step_case(glue: Glue, config: Config, dtype: torch.dtype, device: torch.device) -> StepCase:
    from lib_vpred.webui import timestep_glue

    gen = torch.Generator().manual_seed(0)
    n = config.images
    latent = (4, config.latent, config.latent)
    sigma = torch.linspace(14.6, 2.5, n).to(device)  # per image, as k-diffusion passes them (fp32)
    s = sigma.reshape(-1, 1, 1, 1)
    x = (torch.randn(n, *latent, generator=gen).to(device) * (s * s + 1).sqrt()).to(dtype)
    x_out = torch.randn(2 * n, *latent, generator=gen).to(device, dtype)  # [cond_0..cond_n-1, uncond_0..]
    conds_list = [[(i, 1.0)] for i in range(n)]
    text_uncond = torch.zeros(n, 77, 8, device=device)
    text_cond = torch.zeros(n, 77, 8, device=device)
    x_in, sigma_in = torch.cat([x, x]), torch.cat([sigma, sigma])
    image_cond_in = torch.zeros(2 * n, 5, 1, 1, device=device)
    timesteps = torch.linspace(999, 501, n).to(device)  # the timestep samplers' "sigma": float timesteps
    t_in = torch.cat([timesteps, timesteps])

    plain = glue.sd_samplers.create_sampler("Euler", glue.model).model_wrap_cfg  # the WebUI's own combine_denoised
    p = glue.new_p()
    glue.run_script_hooks(p)
    ext = p.sampler.model_wrap_cfg  # our plan, capture and combine_with_rescale installed
    glue.finish(p)
    p_eps = glue.new_p("DDIM", glue.eps_model)
    glue.run_script_hooks(p_eps, "eps", "On")  # eps checkpoint, ZTSNR on: the eps route (rescale_eps)
    ts_eps = p_eps.sampler.model_wrap_cfg
    state_eps = getattr(p_eps.sampler, timestep_glue.ATTR_STATE)
    glue.finish(p_eps)
    p_v = glue.new_p("DDIM")
    glue.run_script_hooks(p_v)  # v checkpoint: the v route (cfg_rescale on v outputs, no capture)
    ts_v = p_v.sampler.model_wrap_cfg
    glue.finish(p_v)
    glue.eps_model.alphas_cumprod = glue.eps_model.alphas_cumprod.to(device)  # on the GPU, as the WebUI's is

    params_cls = glue.script_callbacks.CFGDenoiserParams
    params_ext = params_cls(x_in, image_cond_in, sigma_in, 0, STEPS, text_cond, text_uncond, ext)
    params_plain = params_cls(x_in, image_cond_in, sigma_in, 0, STEPS, text_cond, text_uncond, plain)
    callback = glue.script_callbacks.cfg_denoiser_callback
    denoised = plain.combine_denoised(x_out, conds_list, text_uncond, CFG_SCALE)
    positive = guidance.positive_prediction(x_out, conds_list, x_out[-n:])
    alpha_bar = glue.eps_model.alphas_cumprod.index_select(0, timesteps.to(torch.int64))
    noop_forward = functools.partial(lambda *args, **kwargs: None)

    def kd_ext() -> torch.Tensor:
        callback(params_ext)
        return ext.combine_denoised(x_out, conds_list, text_uncond, CFG_SCALE)

    def ts_eps_ext() -> torch.Tensor:
        timestep_glue._capture_inputs(state_eps, noop_forward, x_in, t_in)
        return ts_eps.combine_denoised(x_out, conds_list, text_uncond, CFG_SCALE)

    def ts_eps_rescale() -> torch.Tensor:
        a = glue.eps_model.alphas_cumprod.index_select(0, timesteps.to(torch.int64))
        return guidance.rescale_eps(x, a, positive, denoised, PHI)

    benches: dict[str, Callable[[], object]] = {
        "plain": lambda: plain.combine_denoised(x_out, conds_list, text_uncond, CFG_SCALE),
        "kd_ext": kd_ext,
        "kd_capture": lambda: callback(params_ext),
        "kd_positive": lambda: guidance.positive_prediction(x_out, conds_list, x_out[-n:]),
        "kd_rescale": lambda: guidance.rescale_denoised(x, sigma, positive, denoised, PHI),
        "ts_eps_ext": ts_eps_ext,
        "ts_eps_rescale": ts_eps_rescale,
        "ts_v_ext": lambda: ts_v.combine_denoised(x_out, conds_list, text_uncond, CFG_SCALE),
        "ts_v_rescale": lambda: guidance.cfg_rescale(denoised, positive, PHI),
        "inactive": lambda: callback(params_plain),
    }

    # Sanity (not timing): each wrapper must really rescale, or the figures would measure an early return.
    tol = 1e-2 if dtype == torch.float16 else 1e-4
    want = {
        "kd_ext": guidance.rescale_denoised(x, sigma, positive, denoised, PHI),
        "ts_eps_ext": guidance.rescale_eps(x, alpha_bar, positive, denoised, PHI),
        "ts_v_ext": guidance.cfg_rescale(denoised, positive, PHI),
    }
    checks = []
    for key, expected in want.items():
        got = benches[key]()
        differs = not torch.equal(got, denoised)
        same = torch.allclose(got.float(), expected.float(), atol=tol, rtol=tol)
        checks.append("ok" if differs and same else f"WARNING {key}: differs_from_plain={differs} equals_maths={same}")
    return StepCase(config, dtype, benches, checks)


def make_pass_benches(glue: Glue, device: torch.device) -> dict[str, Callable[[], object]]:
    from lib_vpred import params as vp
    from lib_vpred.plan import decide
    from lib_vpred.webui import common

    hooks, shared, model = glue.hooks, glue.shared, glue.model
    p = glue.new_p()
    glue.run_script_hooks(p)
    sampler = p.sampler
    model_wrap = sampler.model_wrap
    settings = vp.from_args([True])
    facts = hooks.model_facts(model, shared.opts)
    sampler_facts = hooks.sampler_facts(sampler, shared.opts)
    table = hooks.ztsnr_sigma_table(model, model_wrap.sigmas.device)
    path = str(glue.checkpoint)
    fresh: list[Any] = []

    def uncached() -> None:
        common._detect_cached.cache_clear()
        hooks.detect_file(path)

    def script_pass() -> None:
        q = fresh.pop() if fresh else glue.new_p()
        glue.run_script_hooks(q)
        glue.finish(q)

    return {
        f"ztsnr_sigma_table (to {device.type})": lambda: hooks.ztsnr_sigma_table(model, device),
        "install_sigma_table": lambda: hooks.install_sigma_table(model_wrap, table),
        "decide": lambda: decide(settings, facts, sampler_facts),
        "SpacingSchedule(steps)": lambda: hooks.SpacingSchedule(sampler)(STEPS),
        "model_facts (detect_file cached)": lambda: hooks.model_facts(model, shared.opts),
        "detect_file, cached": lambda: hooks.detect_file(path),
        "detect_file, uncached (cache cleared)": uncached,
        "script hooks, whole pass": script_pass,
        "_fresh": lambda: fresh.append(glue.new_p()),  # untimed in the table: builds the next pass's sampler
    }


# --- the UNet -------------------------------------------------------------------------------------------------------


def fill_random(module: torch.nn.Module, block: int = 1 << 20) -> None:
    """Random weights at PyTorch's default scale, fast: one random block of ``block`` values tiled into every tensor.

    Drawing 2.6 G fresh random numbers takes a while; the forward's time does not depend on the values, only on their
    being ordinary floats (no NaN, inf or denormals). Norm weights 1, other 1-D tensors small.
    """
    device = next(module.parameters()).device
    gen = torch.Generator().manual_seed(0)
    pattern = (torch.rand(block, generator=gen) * 2 - 1).to(device)  # U(-1, 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # memory-bound copies; on a busy box each parallel op can stall a whole time slice
    try:
        with torch.no_grad():
            for name, t in [*module.named_parameters(), *module.named_buffers()]:
                flat = t.view(-1)
                if t.ndim >= 2:
                    bound = 1.0 / max(1, t[0].numel()) ** 0.5  # kaiming_uniform(a=sqrt(5)) as nn.Linear / nn.Conv2d
                elif "norm" in name and name.endswith("weight"):
                    flat.fill_(1.0)
                    continue
                else:
                    bound = 0.01
                for start in range(0, flat.numel(), block):
                    n = min(block, flat.numel() - start)
                    flat[start : start + n].copy_(pattern[:n]).mul_(bound)
    finally:
        torch.set_num_threads(threads)


def build_unet(config: dict[str, Any], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    # torch's own Module.to: diffusers' override warns about fp32-only modules, which this config does not have
    unet = torch.nn.Module.to(unet, dtype=dtype).to_empty(device=device).eval()
    fill_random(unet)
    return unet


def unet_forward(
    unet: torch.nn.Module, config: dict[str, Any], batch: int, side: int, device: torch.device, dtype: torch.dtype
) -> Callable[[], torch.Tensor]:
    """One UNet step at this batch and latent size (text context of 77 tokens; SDXL: pooled embedding + size ids)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, side, side, generator=gen).to(device, dtype)
    ctx = torch.randn(batch, 77, config["cross_attention_dim"], generator=gen).to(device, dtype)
    t = torch.full((batch,), 999.0, device=device)
    kwargs: dict[str, Any] = {}
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, generator=gen).to(device, dtype),
            "time_ids": torch.tensor([[side * 8, side * 8, 0, 0, side * 8, side * 8]] * batch).to(device, dtype),
        }

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return unet(x, t, encoder_hidden_states=ctx, **kwargs).sample

    return forward


@dataclass
class UnetResult:
    desc: str
    series: Series
    launches: float | None


def measure_unets(
    configs: list[Config],
    archs: dict[str, dict[str, Any]],
    device: torch.device,
    dtype: torch.dtype,
    repeats: int,
    clock: Clock,
    quick: bool,
) -> dict[Config, UnetResult]:
    """Each architecture built once, then every configuration that uses it: a warm-up forward (on CPU only for the
    first one; later shapes reuse the warm model), then ``repeats`` timed forwards."""
    import diffusers  # noqa: F401  (imported before the build is timed)

    results: dict[Config, UnetResult] = {}
    for arch, config in archs.items():
        wanted = [c for c in configs if c.arch == arch and c.unet]
        if not wanted:
            continue
        t0 = time.perf_counter()
        unet = build_unet(config, device, dtype)
        params = sum(p.numel() for p in unet.parameters())
        built = time.perf_counter() - t0
        for k, c in enumerate(wanted):
            forward = unet_forward(unet, config, c.batch, c.latent, device, dtype)
            if k == 0 or device.type == "cuda":
                out = forward()  # warm-up (first call: kernel selection, allocator)
                if not torch.isfinite(out).all():
                    raise RuntimeError(f"the randomly filled {arch} UNet produced non-finite values")
            series = Series([clock.time(forward) for _ in range(repeats)])
            n_launch = launches(forward, device) if device.type == "cuda" else None
            kind = f"tiny {arch}-layout UNet -- NOT {arch}" if quick else f"{arch} UNet"
            desc = (
                f"{kind}, {params / 1e6:.1f} M params, {str(dtype).removeprefix('torch.')}, built in {fmt_time(built)}"
            )
            results[c] = UnetResult(desc, series, n_launch)
        del unet
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


# --- end to end against a real WebUI ----------------------------------------------------------------------------------


def check_loopback(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"--webui-url must be a loopback http URL (127.0.0.1, localhost, ::1); got {url!r}")
    return url.rstrip("/")


def post_json(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def bench_webui(url: str, pairs: int, checkpoint: str, steps: int) -> list[str]:
    """Interleaved txt2img requests with the extension enabled / disabled; returns the printed lines."""
    base = check_loopback(url)
    endpoint = f"{base}/sdapi/v1/txt2img"

    def body(enabled: bool) -> dict[str, Any]:
        return {
            "prompt": "a cat",
            "negative_prompt": "",
            "steps": steps,
            "width": 64,
            "height": 64,
            "seed": 1,
            "sampler_name": "Euler",
            "cfg_scale": CFG_SCALE,
            "override_settings": {"sd_model_checkpoint": checkpoint},
            "alwayson_scripts": {"vpred": {"args": [enabled]}},
        }

    def request(enabled: bool) -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        out = post_json(endpoint, body(enabled), timeout=300)
        return time.perf_counter() - t0, out

    lines = []
    infos = {}
    for enabled in (True, False):  # warm-up: the first request may switch the checkpoint
        _, out = request(enabled)
        infos[enabled] = json.loads(out.get("info") or "{}")
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(pairs):
        for enabled in (True, False) if i % 2 == 0 else (False, True):
            times[enabled].append(request(enabled)[0])
    on, off = statistics.median(times[True]), statistics.median(times[False])
    model_name = infos[True].get("sd_model_name")
    infotext_on = (infos[True].get("infotexts") or [""])[0]
    infotext_off = (infos[False].get("infotexts") or [""])[0]
    applied = "VPred" in infotext_on and "VPred" not in infotext_off
    lines.append(
        f"WebUI {base}: txt2img 64x64, {steps} steps, Euler, CFG {CFG_SCALE:g}, checkpoint {model_name!r}, "
        f"{pairs} interleaved pairs"
    )
    if model_name != checkpoint:
        lines.append(f"WARNING: the WebUI sampled with {model_name!r}, not {checkpoint!r}")
    lines.append(
        "extension applied when enabled (VPred keys in the infotext) and absent when disabled: "
        + ("yes" if applied else f"NO (enabled infotext: {infotext_on!r})")
    )
    lines.append(f"{'request':<38} {'median':>11} {'min':>11} {'max':>11} {'runs':>5}")
    for enabled in (True, False):
        ts = times[enabled]
        label = "vpred args [true]  (enabled)" if enabled else "vpred args [false] (disabled)"
        lines.append(
            f"{label:<38} {fmt_time(statistics.median(ts)):>11} {fmt_time(min(ts)):>11} "
            f"{fmt_time(max(ts)):>11} {len(ts):>5}"
        )
    pair_diffs = [a - b for a, b in zip(times[True], times[False], strict=True)]
    lines.append(
        f"ratio enabled / disabled (medians): {on / off:.3f}; median paired difference "
        f"{fmt_time(statistics.median(pair_diffs))} per request ({fmt_time(statistics.median(pair_diffs) / steps)} "
        f"per step)"
    )
    lines.append(
        "the tiny checkpoint makes the UNet nearly free: this ratio is a worst case for the extension's relative cost"
    )
    return lines


# --- main -------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to measure (default cpu)")
    ap.add_argument("--quick", action="store_true", help="CI smoke: tiny UNets and latents, one thread")
    ap.add_argument("--webui-url", default=None, help="also run end to end against this WebUI (loopback only)")
    ap.add_argument("--webui-pairs", type=int, default=None, help="enabled/disabled request pairs (default 10)")
    ap.add_argument("--webui-checkpoint", default="tiny-vpred", help="checkpoint for --webui-url (default tiny-vpred)")
    ap.add_argument("--reps", type=int, default=None, help="per-step samples (default cuda 50, cpu 15, quick 5)")
    ap.add_argument("--inner", type=int, default=None, help="calls per per-step sample (default cuda 20, cpu 1)")
    ap.add_argument("--unet-repeats", type=int, default=None, help="timed UNet steps (default cuda 20, cpu 3)")
    ap.add_argument("--step-threads", type=int, default=1, help="CPU: torch threads for the per-step rows (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own, quick: 1)")
    ap.add_argument("--no-unet", action="store_true", help="skip the UNet (no % of step)")
    args = ap.parse_args(argv)

    if args.webui_url:
        check_loopback(args.webui_url)  # refuse a non-loopback URL before minutes of measuring
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA device", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    quick = args.quick
    note = f" {QUICK_NOTE}" if quick else ""
    reps = args.reps or (5 if quick else 50 if cuda else 15)
    inner = args.inner or (20 if cuda else 1)
    unet_repeats = args.unet_repeats or (2 if quick else 20 if cuda else 3)
    if args.threads or quick:
        torch.set_num_threads(args.threads or 1)
    configs = list(QUICK_CONFIGS if quick else CUDA_CONFIGS if cuda else CPU_CONFIGS)
    archs = TINY_ARCHS if quick else ARCHS
    unet_dtype = torch.float16 if cuda else torch.float32
    clock = Clock(device)
    where = f"CUDA {torch.cuda.get_device_name(device)}" if cuda else f"CPU {cpu_model()}"
    print(
        f"bench_overhead{note}: python {platform.python_version()}, torch {torch.__version__}, {where}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load avg {load_avg()}"
    )

    t_start = time.perf_counter()
    unets: dict[Config, UnetResult] = {}
    if not args.no_unet:
        unets = measure_unets(configs, archs, device, unet_dtype, unet_repeats, clock, quick)
    t_unet = time.perf_counter() - t_start

    threads = torch.get_num_threads()
    if not cuda:
        torch.set_num_threads(args.step_threads)
    with tempfile.TemporaryDirectory(prefix="vpred-bench-") as tmp:
        glue = Glue(Path(tmp))
        cases = [make_step_case(glue, c, dt, device) for c in configs for dt in (torch.float32, torch.float16)]
        pass_benches = make_pass_benches(glue, device)
        make_fresh = pass_benches.pop("_fresh")
        series: dict[int, dict[str, Series]] = {i: {} for i in range(len(cases))}
        for i, case in enumerate(cases):
            run_round(clock, case.benches, {}, 2, inner)  # warm-up, discarded
            run_round(clock, case.benches, series[i], reps, inner)
        counts = [{k: launches(fn, device) for k, fn in case.benches.items()} for case in cases]
        pass_series: dict[str, Series] = {}
        pass_reps = max(3, reps // 3)
        for _ in range(pass_reps + 1):
            make_fresh()  # a fresh p + sampler for each "script hooks, whole pass" run, built untimed
        run_round(Clock(torch.device("cpu")), pass_benches, {}, 1, 1)  # warm-up
        run_round(Clock(torch.device("cpu")), pass_benches, pass_series, pass_reps, 1)
        op_tables = {
            key: count_ops(cases[0].benches[key]).table()
            for key in ("kd_ext", "kd_capture", "ts_eps_ext", "ts_v_ext", "plain")
        }
    torch.set_num_threads(threads)

    print()
    print(f"Per-step overhead on {where}{note}")
    if cuda:
        print(f"each per-step sample: {inner} back-to-back calls between two torch.cuda.synchronize(), per call")
    else:
        print(f"per-step rows on {args.step_threads} torch thread(s), the UNet on {threads}")
    width = 62
    header = f"{'operation':<{width}} {'median':>10} {'min':>10} {'% of step':>10} {'launches':>9}"
    unit = "kernels on the device" if cuda else "kernel-launching aten ops (CPU profiler)"
    print(f"launches: {unit} per step; % of step: median over the UNet step's median")
    for config in configs:
        unet = unets.get(config)
        print()
        print(f"== {config.label}")
        step = unet.series.median if unet else None
        if unet:
            n_l = f", {unet.launches:.0f} kernels" if unet.launches is not None else ""
            print(
                f"UNet step: median {fmt_time(unet.series.median)}, min {fmt_time(unet.series.min)} over "
                f"{len(unet.series.times)}{n_l}; {unet.desc}"
            )
        else:
            print("UNet step: not measured here" + (" (--no-unet)" if args.no_unet else " (CPU: too large)"))
        for i, case in enumerate(cases):
            if case.config != config:
                continue
            dt = str(case.dtype).removeprefix("torch.")
            shape = [2 * config.images, 4, config.latent, config.latent]
            print(f"[latents {dt}, x_out {shape}] wrapper checks: {', '.join(case.checks)}")
            print(header)
            s = series[i]
            for key, label in STEP_ROWS:
                if key in EXTRAS:
                    ext, base = EXTRAS[key]
                    diffs = [a - b for a, b in zip(s[ext].times, s[base].times, strict=True)]
                    med, mn = statistics.median(diffs), s[ext].min - s[base].min
                    n_launch = counts[i][ext] - counts[i][base]
                else:
                    med, mn, n_launch = s[key].median, s[key].min, counts[i][key]
                pct = fmt_pct(med / step) if step else ""
                print(f"{label:<{width}} {fmt_time(med):>10} {fmt_time(mn):>10} {pct:>10} {n_launch:>9.0f}")
    print()
    print(f"Kernel-launching aten ops per step (CPU profiler), {cases[0].config.label}, fp32 latents:")
    for key, table in op_tables.items():
        print(f"  {key}: {table or '(none)'}")
    print()
    print(f"Once per pass ({STEPS} steps, Euler, v-pred SD1 stand-in model with a YAML beside its safetensors)")
    for name in pass_benches:
        s = pass_series[name]
        print(f"  {name:<60} {fmt_time(s.median):>10} {fmt_time(s.min):>10} {len(s.times):>5}")
    print(f"load avg at end: {load_avg()}; UNet part {fmt_time(t_unet)}")

    if args.webui_url:
        print()
        print("End to end against a real WebUI")
        pairs = args.webui_pairs or (3 if quick else 10)
        try:
            for line in bench_webui(args.webui_url, pairs, args.webui_checkpoint, steps=8):
                print(line)
        except (urllib.error.URLError, OSError) as e:
            print(f"WebUI request failed: {e}")
            return 1
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"total runtime: {fmt_time(time.perf_counter() - _T0)} wall (from before 'import torch'), "
        f"{fmt_time(usage.ru_utime + usage.ru_stime)} CPU{note}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
