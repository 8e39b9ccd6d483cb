"""Benchmark: the extension's per-step and per-pass overhead against one SD1.5 UNet forward.

    python bench/bench_overhead.py [--quick] [--webui-url http://127.0.0.1:7860] [--profile]

What is measured, all on CPU in this process (torch's default thread count), figures printed and never asserted:

1. Per sampling step, the extension's work, for SD1.5 latents (batch of 2 images, so ``x_out`` holds 4 rows
   ``[cond0, cond1, uncond0, uncond1]`` of 4x64x64) and SDXL latents (4x128x128), fp32 and fp16 inputs:
   (a) the v-space rescale maths alone: ``guidance.positive_prediction`` + ``guidance.rescale_denoised``;
   (b) the whole per-step glue path as the WebUI runs it: ``script_callbacks.cfg_denoiser_callback`` (our
   ``on_cfg_denoiser`` capture, registered by loading ``scripts/vpred.py``) + the ``combine_with_rescale`` wrapper
   installed by the script's ``process_before_every_sampling``, against the plain WebUI ``combine_denoised`` of an
   untouched denoiser. The WebUI is the glue tier's stand-in (``tests/glue/stub/modules``, v1.10.1 code paths,
   real k_diffusion) driven the way ``tests/glue/conftest.py`` does it. Plain and extension runs alternate, in a
   rotating order, and the EXTRA cost is the median of the paired differences (its "min" column: min(extension) -
   min(plain)). The same pairs are also run on one torch thread (when torch has more): on a busy machine every
   parallel reduction (``aten::std`` here) can wait a whole scheduler time slice at an OpenMP barrier, which the
   one-thread rows do not. Also: the callback's cost when the extension is inactive (eps checkpoint or disabled).
2. Once per pass: ``ztsnr_sigma_table``, ``install_sigma_table``, ``decide``, ``TrailingSchedule(sampler)(steps)``,
   ``model_facts``, ``detect_file`` cached and uncached (on a small safetensors checkpoint with a YAML beside it),
   and the script's whole ``process`` + ``process_before_every_sampling`` + ``postprocess`` on a fresh sampler.
3. One UNet forward at SD1.5 size: diffusers ``UNet2DConditionModel`` built from the SD1.5 architecture config
   (859.5 M parameters; on the meta device, then filled by :func:`fill_random`: random values at PyTorch's default
   scale, no download), batch 2 (cond + uncond) at a 64x64 latent, ``encoder_hidden_states`` [2, 77, 768],
   ``torch.no_grad()``, fp32. It takes minutes on a small CPU (~100-165 s on a busy 2-core box), so the forwards are
   interleaved with rounds of the extension measurements (round, forward, round, ...) and their number is bounded
   by ``--unet-forwards`` and ``--budget-s``; a cheap 8x8 forward warms the model up first.
4. The ratio extension-per-step / UNet forward (target: < 0.5 % of a step) for SD1.5, and the SDXL-size cost over
   the same SD1.5 forward as an upper bound (an SDXL UNet forward is ~2-3x an SD1.5 one, so the real ratio is lower).
5. ``--webui-url`` (loopback only): end to end against a real WebUI with the ``tiny-vpred`` checkpoint
   (tests/webui/README.md): interleaved txt2img requests (64x64, 8 steps, Euler) with
   ``"alwayson_scripts": {"vpred": {"args": [true]}}`` vs ``[false]``; median wall time of each and their ratio. The
   tiny model makes the UNet nearly free, so this ratio is a worst case for the extension's relative overhead.

Medians are the figures to read; minima show the uncontended cost on a shared machine. ``--quick`` (CI smoke,
< 20 s on an idle 2-core box): tiny latents, a tiny UNet config and one torch thread, same table shape, marked
"(quick: not representative)", targets not judged. ``--profile`` adds torch.profiler tables of the SD1.5 fp32
per-step path (torch's threads, then one thread); ``--threads N`` sets torch's thread count for everything.
"""

from __future__ import annotations

import argparse
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
# k_diffusion imports openai clip, which imports pkg_resources: a deprecation warning on every run, not ours.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

import torch  # noqa: E402

from lib_vpred import guidance  # noqa: E402

#: Target stated for the extension's per-step work: under 0.5 % of one sampling step (one UNet forward).
TARGET_FRACTION = 0.005
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
#: --quick: the same block layout shrunk ~1000x (not an SD1.5 UNet; only keeps the code path alive).
TINY_UNET_CONFIG: dict[str, Any] = {
    **SD15_UNET_CONFIG,
    "sample_size": 8,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
}


@dataclass(frozen=True)
class Size:
    label: str
    latent: tuple[int, int, int]  # C, H, W
    text_dim: int  # width of the text conditioning (only its batch size is read by combine_denoised)


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
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} us"


def fmt_pct(fraction: float | None) -> str:
    return "" if fraction is None else f"{fraction * 100:.4f} %"


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_round(benches: dict[str, Callable[[], object]], series: dict[str, Series], reps: int, offset: int) -> None:
    """``reps`` passes over every bench, in an order rotated on each pass (no position bias in a shared machine)."""
    names = list(benches)
    for i in range(reps):
        k = (i + offset) % len(names)
        for name in names[k:] + names[:k]:
            series.setdefault(name, Series()).times.append(timed(benches[name]))


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
    """``scripts/vpred.py`` loaded against the stand-in modules, with a registered v-pred model (as the glue tests do)."""

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
        self.hooks = self.script_module.hooks
        self.script = self.script_module.VPredScript()
        self.checkpoint = write_checkpoint(tmp, "bench-vpred", family="SD1", yaml_v=True)
        self.model = FakeSDModel(self.checkpoint, parameterization="v")
        sd_models.register(self.model)
        shared.sd_model = self.model
        shared.opts.sd_model_checkpoint = "bench-vpred"

    def sampler(self) -> Any:
        return self.sd_samplers.create_sampler("Euler", self.model)

    def new_p(self) -> Any:
        p = self.processing.StableDiffusionProcessingTxt2Img(sd_model=self.model, steps=STEPS)
        p.sampler = self.sampler()
        return p

    def run_script_hooks(self, p: Any, enabled: bool = True) -> None:
        """What the WebUI calls on the script for one txt2img pass (before sampling, and after)."""
        self.script.process(p, enabled, "Auto", "Auto", "Trailing", PHI)
        self.script.process_before_every_sampling(p)

    def finish(self, p: Any) -> None:
        self.script.postprocess(p, None)


@dataclass
class StepCase:
    """Inputs of one sampling step at one size and dtype, and the benches on them."""

    size: Size
    dtype: torch.dtype
    benches: dict[str, Callable[[], object]]
    check: str


def make_step_case(glue: Glue, size: Size, dtype: torch.dtype) -> StepCase:
    gen = torch.Generator().manual_seed(0)
    images = 2
    sigma = torch.tensor([14.6, 2.5])  # per image, as k-diffusion passes them (fp32)
    s = sigma.reshape(-1, 1, 1, 1)
    x = (torch.randn(images, *size.latent, generator=gen) * (s * s + 1).sqrt()).to(dtype)
    x_out = torch.randn(2 * images, *size.latent, generator=gen).to(dtype)  # [cond0, cond1, uncond0, uncond1]
    conds_list = [[(0, 1.0)], [(1, 1.0)]]
    text_uncond = torch.zeros(images, 77, size.text_dim)
    text_cond = torch.zeros(images, 77, size.text_dim)
    x_in, sigma_in = torch.cat([x, x]), torch.cat([sigma, sigma])
    image_cond_in = torch.zeros(2 * images, 5, 1, 1)

    plain = glue.sampler().model_wrap_cfg  # untouched: the WebUI's own combine_denoised
    p = glue.new_p()
    glue.run_script_hooks(p)
    ext = p.sampler.model_wrap_cfg  # our plan, capture and combine_with_rescale installed
    params_cls = glue.script_callbacks.CFGDenoiserParams
    params_ext = params_cls(x_in, image_cond_in, sigma_in, 0, STEPS, text_cond, text_uncond, ext)
    params_plain = params_cls(x_in, image_cond_in, sigma_in, 0, STEPS, text_cond, text_uncond, plain)
    callback = glue.script_callbacks.cfg_denoiser_callback
    denoised = plain.combine_denoised(x_out, conds_list, text_uncond, CFG_SCALE)

    def maths() -> torch.Tensor:
        positive = guidance.positive_prediction(x_out, conds_list, x_out[-images:])
        return guidance.rescale_denoised(x, sigma, positive, denoised, PHI)

    def glue_plain() -> torch.Tensor:
        return plain.combine_denoised(x_out, conds_list, text_uncond, CFG_SCALE)

    def glue_ext() -> torch.Tensor:
        callback(params_ext)
        return ext.combine_denoised(x_out, conds_list, text_uncond, CFG_SCALE)

    def inactive() -> None:
        callback(params_plain)

    # Sanity (not timing): the wrapper must really rescale, or the figures would measure an early return.
    got, want = glue_ext(), maths()
    differs = not torch.equal(got, glue_plain())
    same = torch.allclose(got.float(), want.float(), atol=1e-3 if dtype == torch.float16 else 1e-5)
    check = "ok" if differs and same else f"WARNING: wrapper output differs_from_plain={differs} equals_maths={same}"
    glue.finish(p)
    return StepCase(
        size,
        dtype,
        {"maths": maths, "plain": glue_plain, "ext": glue_ext, "inactive": inactive},
        check,
    )


def make_pass_benches(glue: Glue) -> dict[str, Callable[[], object]]:
    from lib_vpred import params as vp
    from lib_vpred.plan import decide

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
        hooks._detect_cached.cache_clear()
        hooks.detect_file(path)

    def script_pass() -> None:
        q = fresh.pop() if fresh else glue.new_p()
        glue.run_script_hooks(q)
        glue.finish(q)

    return {
        "ztsnr_sigma_table": lambda: hooks.ztsnr_sigma_table(model, model_wrap.sigmas.device),
        "install_sigma_table": lambda: hooks.install_sigma_table(model_wrap, table),
        "decide": lambda: decide(settings, facts, sampler_facts),
        "TrailingSchedule(steps)": lambda: hooks.TrailingSchedule(sampler)(STEPS),
        "model_facts (detect_file cached)": lambda: hooks.model_facts(model, shared.opts),
        "detect_file, cached": lambda: hooks.detect_file(path),
        "detect_file, uncached (cache cleared)": uncached,
        "script hooks, whole pass": script_pass,
        "_fresh": lambda: fresh.append(glue.new_p()),  # untimed in the table: builds the next pass's sampler
    }


# --- the UNet -------------------------------------------------------------------------------------------------------


def fill_random(module: torch.nn.Module, block: int = 1 << 20) -> None:
    """Random weights at PyTorch's default scale, fast: one random block of ``block`` values tiled into every tensor.

    Drawing 860 M fresh random numbers takes ~15 s on a small CPU; the forward's time does not depend on the values,
    only on their being ordinary floats (no NaN, inf or denormals). Norm weights 1, other 1-D tensors small.
    """
    gen = torch.Generator().manual_seed(0)
    pattern = torch.rand(block, generator=gen) * 2 - 1  # U(-1, 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # memory-bound copies; on a busy box each parallel op can stall a whole time slice
    try:
        _fill(module, pattern, block)
    finally:
        torch.set_num_threads(threads)


def _fill(module: torch.nn.Module, pattern: torch.Tensor, block: int) -> None:
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


def build_unet(quick: bool) -> tuple[Any, Callable[[], object], Callable[[], object], str]:
    """(model, forward at the measured size, a cheap warm-up forward, description)."""
    from diffusers import UNet2DConditionModel

    config = TINY_UNET_CONFIG if quick else SD15_UNET_CONFIG
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    unet = unet.to_empty(device="cpu").eval()
    fill_random(unet)
    params = sum(p.numel() for p in unet.parameters())
    side = 8 if quick else 64
    ctx_dim = config["cross_attention_dim"]
    x = torch.randn(2, 4, side, side)
    ctx = torch.randn(2, 77, ctx_dim)
    t = torch.tensor([999.0, 999.0])
    x_small = torch.randn(2, 4, 8, 8)

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return unet(x, t, encoder_hidden_states=ctx).sample

    def warmup() -> torch.Tensor:
        with torch.no_grad():
            return unet(x_small, t, encoder_hidden_states=ctx).sample

    with torch.no_grad():
        out = unet(x_small, t, encoder_hidden_states=ctx).sample
    if not torch.isfinite(out).all():
        raise RuntimeError("the randomly filled UNet produced non-finite values")
    kind = "tiny UNet (32, 64) -- NOT SD1.5" if quick else "SD1.5 UNet"
    desc = f"{kind}, {params / 1e6:.1f} M params, fp32, batch 2 (cond+uncond), latent 4x{side}x{side}, ctx [2, 77, {ctx_dim}]"
    return unet, forward, warmup, desc


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
    ap.add_argument("--quick", action="store_true", help="CI smoke: tiny sizes and a tiny UNet, < 20 s")
    ap.add_argument("--webui-url", default=None, help="also run end to end against this WebUI (loopback only)")
    ap.add_argument("--webui-pairs", type=int, default=None, help="enabled/disabled request pairs (default 10)")
    ap.add_argument("--webui-checkpoint", default="tiny-vpred", help="checkpoint for --webui-url (default tiny-vpred)")
    ap.add_argument(
        "--unet-forwards", type=int, default=None, help="at most this many timed UNet forwards (default 3, quick 1)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own, quick: 1)")
    ap.add_argument(
        "--budget-s", type=float, default=200.0, help="no new UNet forward once it would end past this (default 200)"
    )
    ap.add_argument("--reps", type=int, default=None, help="per-step repetitions per round (default 15, quick 5)")
    ap.add_argument("--no-unet", action="store_true", help="skip the UNet (no ratios)")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of the SD1.5 fp32 glue step")
    args = ap.parse_args(argv)

    if args.webui_url:
        check_loopback(args.webui_url)  # refuse a non-loopback URL before minutes of measuring
    t_start = time.perf_counter()
    quick = args.quick
    note = f" {QUICK_NOTE}" if quick else ""
    reps = args.reps or (5 if quick else 15)
    forwards = args.unet_forwards or (1 if quick else 3)
    if args.threads or quick:
        # --quick: one thread, so a CI box running other jobs does not thrash OpenMP barriers (seconds per call)
        torch.set_num_threads(args.threads or 1)
    sizes = (
        [Size("SD1.5-like 4x8x8", (4, 8, 8), 768), Size("SDXL-like 4x16x16", (4, 16, 16), 2048)]
        if quick
        else [Size("SD1.5 4x64x64", (4, 64, 64), 768), Size("SDXL 4x128x128", (4, 128, 128), 2048)]
    )
    print(
        f"bench_overhead{note}: python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs ({cpu_model()}), load avg {load_avg()}"
    )

    with tempfile.TemporaryDirectory(prefix="vpred-bench-") as tmp:
        glue = Glue(Path(tmp))
        cases = [make_step_case(glue, size, dtype) for size in sizes for dtype in (torch.float32, torch.float16)]
        step_benches: dict[str, Callable[[], object]] = {}
        for i, case in enumerate(cases):
            for name, fn in case.benches.items():
                step_benches[f"{i}:{name}"] = fn
        pass_benches = make_pass_benches(glue)
        make_fresh = pass_benches.pop("_fresh")
        series: dict[str, Series] = {}
        pass_series: dict[str, Series] = {}

        def extension_round(offset: int, n: int = reps) -> None:
            run_round(step_benches, series, n, offset)
            for _ in range(n):
                make_fresh()  # a fresh p + sampler for each "script hooks, whole pass" run, built untimed
            run_round(pass_benches, pass_series, n, offset)

        extension_round(0, 2)  # warm-up, discarded
        series.clear()
        pass_series.clear()
        t_setup = time.perf_counter() - t_start

        unet_times: list[float] = []
        unet_desc = "not measured (--no-unet)"
        t_unet_build = 0.0
        offset = 1
        extension_round(offset)
        if not args.no_unet:
            t0 = time.perf_counter()
            _unet, forward, warmup, unet_desc = build_unet(quick)
            t_unet_build = time.perf_counter() - t0
            warmup()
            for _ in range(max(1, forwards)):
                if unet_times and (time.perf_counter() - t_start) + unet_times[-1] > args.budget_s:
                    break
                unet_times.append(timed(forward))
                offset += 1
                extension_round(offset)
            del _unet
        series_1t: dict[str, Series] = {}
        threads = torch.get_num_threads()
        if threads > 1:
            # The same plain/extension pairs on one thread: shows what OpenMP barriers cost on a busy machine.
            torch.set_num_threads(1)
            try:
                subset = {k: v for k, v in step_benches.items() if k.endswith((":plain", ":ext"))}
                run_round(subset, series_1t, 2, 0)  # warm-up
                series_1t.clear()
                run_round(subset, series_1t, reps, 0)
            finally:
                torch.set_num_threads(threads)
        if args.profile:
            profile_glue_step(cases[0])

    unet = statistics.median(unet_times) if unet_times else None

    def frac(seconds: float) -> float | None:
        return seconds / unet if unet else None

    print()
    print(f"Per-step and per-pass overhead{note}")
    print(f"UNet: {unet_desc}")
    if unet_times:
        print(
            f"UNet forward: median {fmt_time(unet)} over {len(unet_times)} timed forward(s) "
            f"[{', '.join(fmt_time(t) for t in unet_times)}]; built in {fmt_time(t_unet_build)}"
        )
    width = 66
    header = f"{'operation':<{width}} {'median':>11} {'min':>11} {'runs':>5} {'% of UNet fwd':>14}"
    print(header)
    print("-" * len(header))

    def row(label: str, med: float, mn: float | None, n: int | str, fraction: float | None) -> None:
        mn_s = fmt_time(mn) if mn is not None else ""
        print(f"{label:<{width}} {fmt_time(med):>11} {mn_s:>11} {n!s:>5} {fmt_pct(fraction):>14}")

    extras: dict[tuple[str, str], float] = {}
    extras_1t: dict[tuple[str, str], float] = {}
    for i, case in enumerate(cases):
        dt = "fp32" if case.dtype == torch.float32 else "fp16"
        tag = f"{case.size.label}, {dt}"
        s_maths, s_plain, s_ext, s_inactive = (series[f"{i}:{k}"] for k in ("maths", "plain", "ext", "inactive"))
        diffs = [a - b for a, b in zip(s_ext.times, s_plain.times, strict=True)]
        extra = statistics.median(diffs)
        extras[(case.size.label, dt)] = extra
        print(f"[{tag}] x_out [4, {', '.join(map(str, case.size.latent))}], 2 images; wrapper check: {case.check}")
        row(
            "  (a) rescale maths: positive_prediction + rescale_denoised",
            s_maths.median,
            s_maths.min,
            len(s_maths.times),
            frac(s_maths.median),
        )
        row(
            "  (b) WebUI combine_denoised (plain, no extension)",
            s_plain.median,
            s_plain.min,
            len(s_plain.times),
            frac(s_plain.median),
        )
        row(
            "  (b) capture callback + combine_with_rescale wrapper",
            s_ext.median,
            s_ext.min,
            len(s_ext.times),
            frac(s_ext.median),
        )
        row(
            "  (b) EXTRA per step = wrapper path - plain (median of pairs)",
            extra,
            s_ext.min - s_plain.min,
            len(diffs),
            frac(extra),
        )
        if series_1t:
            p1, e1 = series_1t[f"{i}:plain"], series_1t[f"{i}:ext"]
            d1 = statistics.median([a - b for a, b in zip(e1.times, p1.times, strict=True)])
            extras_1t[(case.size.label, dt)] = d1
            row("  (b) EXTRA per step, same pairs on 1 torch thread", d1, e1.min - p1.min, len(e1.times), frac(d1))
        row(
            "  inactive (eps/disabled): callback returns at once",
            s_inactive.median,
            s_inactive.min,
            len(s_inactive.times),
            frac(s_inactive.median),
        )
    print(f"[once per pass] ({STEPS} steps, Euler, v-pred SD1 stand-in model with a YAML beside its safetensors)")
    for name in pass_benches:
        s = pass_series[name]
        row(f"  (c) {name}", s.median, s.min, len(s.times), frac(s.median))
    four = ("ztsnr_sigma_table", "install_sigma_table", "decide", "TrailingSchedule(steps)")
    total4 = sum(pass_series[k].median for k in four)
    row("  (c) sum: ztsnr table + install + decide + TrailingSchedule", total4, None, "", frac(total4))
    print("-" * len(header))

    sd15, sdxl = sizes[0].label, sizes[1].label
    if unet:
        unet_name = "tiny UNet" if quick else "SD1.5 UNet"

        def verdict(seconds: float) -> str:
            r = seconds / unet
            if quick:
                return f"{r * 100:.4f} % (not judged: quick)"
            return f"{r * 100:.4f} % ({'met' if r < TARGET_FRACTION else 'MISSED'})"

        print(f"Ratios to one {unet_name} forward (target: extension < {TARGET_FRACTION * 100:g} % of a step){note}")
        for size, what in ((sd15, "extension extra per step"), (sdxl, "upper bound: SDXL-size extra")):
            for dt in ("fp32", "fp16"):
                line = f"  {what}, {size} {dt} / {unet_name} forward: {verdict(extras[(size, dt)])}"
                if (size, dt) in extras_1t:
                    line += f"; 1 thread: {verdict(extras_1t[(size, dt)])}"
                print(line)
        print("  (an SDXL UNet forward at 128x128 is ~2-3x an SD1.5 one at 64x64, so the real SDXL ratio is lower)")
        per_pass = pass_series["script hooks, whole pass"].median
        print(
            f"  once-per-pass script hooks / ({STEPS} steps x {unet_name} forward): {per_pass / (STEPS * unet) * 100:.5f} %"
        )
    print(f"load avg at end: {load_avg()}; setup (imports, stand-in, warm-up) {fmt_time(t_setup)}")

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


def profile_glue_step(case: StepCase) -> None:
    """torch.profiler tables of the extension's per-step path (capture + wrapper): torch's threads, then one thread."""
    from torch.profiler import ProfilerActivity, profile

    fn = case.benches["ext"]
    dt = "fp32" if case.dtype == torch.float32 else "fp16"
    threads = torch.get_num_threads()
    for n in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(n)
        try:
            for _ in range(3):
                fn()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(20):
                    fn()
        finally:
            torch.set_num_threads(threads)
        print()
        print(f"profile: capture + combine_with_rescale, {case.size.label} {dt}, 20 calls, {n} torch thread(s)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    raise SystemExit(main())
