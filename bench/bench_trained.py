"""Fidelity benchmark on a trained network: which spacing / schedule each sampler should default to.

One command, CPU, one thread, no download: ``python bench/bench_trained.py`` (``--quick``: CI smoke run). It loads the
committed reference models (``bench/reference_model``: a small class-conditional UNet trained on exposure-augmented
16x16 patches of scikit-image's photographs) and samples them through the WebUI's own code paths:

- ``vpred_ztsnr`` (v-prediction, the extension's ZTSNR table) through ``k_diffusion.external.CompVisVDenoiser``, CFG
  combined as the WebUI does (``uncond + (cond - uncond) * scale`` on the denoised prediction) and, with phi > 0, the
  extension's rescale in v space (:func:`lib_vpred.guidance.rescale_denoised`); DDIM and UniPC through the extension's
  v loops (:func:`lib_vpred.timestep.ddim_sample_v`, :func:`lib_vpred.timestep.unipc_sample_v`; rescale by
  :func:`lib_vpred.guidance.cfg_rescale` on the guided v);
- ``eps_stock`` (eps twin, stock SD table) through ``CompVisDenoiser`` with the WebUI's default scheduler per sampler
  (DDIM: the WebUI's leading+1 timesteps): the stock failure this extension exists to fix.

Grid (v model): sampler (Euler, Euler a, DPM++ 2M, DPM++ 2M SDE, DPM++ SDE, Heun, LMS, DDIM, UniPC) x schedule x steps
(10, 20, 30) x (CFG, phi) in (1, -), (5, 0), (5, 0.7), (7.5, 0), (7.5, 0.7). Schedules:

- ``trailing``: the extension's default (:func:`lib_vpred.schedule.trailing_sigmas`; DDIM: ``[0] + trailing``; UniPC:
  ``steps`` calls, ``time_uniform``). Heun takes its first step with Euler (:func:`lib_vpred.sampling.with_euler_first_step`)
  under every ZTSNR schedule except ``builtin``, as the extension runs it;
- ``linspace``: timesteps ``round(linspace(999, 0, steps))``, i.e. first step at t = 999, last at sigma_min (DDIM:
  ``round(linspace(0, 999, steps + 1))``, ``steps`` calls ending on t = 0);
- ``karras`` (rho 7), ``exponential``, ``sgm_uniform``: the WebUI's schedulers from the ZTSNR sigma_max (4518.8) to
  sigma_min (0.029) (UniPC: ``exponential`` = its ``logSNR`` skip type, the same spacing);
- ``builtin``: the WebUI's built-in "Zero Terminal SNR" with the sampler's default scheduler (uniform for Euler, Euler a,
  Heun, LMS; Karras for DPM++ 2M / SDE; Exponential for DPM++ 2M SDE; DDIM leading+1; UniPC ``time_uniform`` with the
  WebUI's timestep count), no Euler first step for Heun.

Metrics against held-out data (the right quarter of every photograph, never trained on; 3000 images, balanced
classes), generated images clipped to [-1, 1] as a saved image is, labels balanced over the 3 exposure classes:

- ``bstd``: std of per-image brightness / the data's (1 = right; the stock failure is well below 1);
- ``dark`` / ``bright``: share of images with mean brightness < 0.2 / > 0.8 (data: about 0.22 / 0.24);
- ``low`` / ``mid`` / ``high``: power per frequency band (|f| in (0, 2], (2, 4], > 4 cycles per 16 px; per-image
  mean removed) / the data's;
- ``swd``: multi-scale sliced Wasserstein-1 distance to the held-out set (x100; mean over 1x1, 4x4, 8x8, 16x16
  average-pooled images, 64 fixed random directions each). ``data`` row: the same figures for as many *training-split*
  images, i.e. the floor a perfect model would reach at this sample size.

Every figure comes with its sampling noise: the bootstrap standard error over the generated images (the seeds).
Noise seeds and labels are shared by all schedules of a (sampler, steps) cell, so schedule comparisons are paired.
Writes ``out/trained.csv`` and ``out/trained_*.png``; ``--proxy`` columns come from the exact-denoiser proxy of
bench_fidelity.py at CFG 1 for the samplers it models.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "reference_model"))
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # clip-anytorch, imported by k_diffusion

import data as refdata  # noqa: E402
import exact  # noqa: E402
from net import NULL_LABEL, CompVisModel, TinyUNet  # noqa: E402

from lib_vpred import guidance, plan, timestep  # noqa: E402
from lib_vpred.sampling import with_euler_first_step  # noqa: E402
from lib_vpred.schedule import (  # noqa: E402
    scaled_linear_alphas_cumprod,
    spaced_timesteps,
    trailing_sigmas,
    ztsnr_alphas_cumprod,
)

WEIGHTS = HERE / "reference_model" / "weights"

SAMPLERS: tuple[str, ...] = (
    "Euler",
    "Euler a",
    "DPM++ 2M",
    "DPM++ 2M SDE",
    "DPM++ SDE",
    "Heun",
    "LMS",
    "DDIM",
    "UniPC",
)
SCHEDULES: tuple[str, ...] = ("trailing", "linspace", "karras", "exponential", "sgm_uniform", "builtin")
#: Schedules each timestep sampler can run (the others have no such option in the WebUI).
TIMESTEP_SCHEDULES = {"DDIM": ("trailing", "linspace", "builtin"), "UniPC": ("trailing", "exponential", "builtin")}
#: The WebUI's "Automatic" scheduler per k-diffusion sampler (A1111 v1.10.1, webui-hooks.md section 4).
WEBUI_DEFAULT = {
    "Euler": "uniform",
    "Euler a": "uniform",
    "Heun": "uniform",
    "LMS": "uniform",
    "DPM++ 2M": "karras",
    "DPM++ SDE": "karras",
    "DPM++ 2M SDE": "exponential",
}
STOCHASTIC = frozenset({"Euler a", "DPM++ 2M SDE", "DPM++ SDE"})

FULL = {
    "steps": (10, 20, 30),
    "guidance": ((1.0, 0.0), (5.0, 0.0), (5.0, 0.7), (7.5, 0.0), (7.5, 0.7)),
    "images": 48,
    "held_out": 3000,
    "boot": 50,
    "proxy_samples": 256,
    "phi_sweep": (0.3, 0.5, 0.9, 1.0),
}
QUICK = {
    "steps": (10,),
    "guidance": ((1.0, 0.0), (7.5, 0.7)),
    "images": 9,
    "held_out": 300,
    "boot": 10,
    "proxy_samples": 32,
    "phi_sweep": (),
}

DARK_BELOW, BRIGHT_ABOVE = 0.2, 0.8
BAND_EDGES = {"low": (0.0, 2.0), "mid": (2.0, 4.0), "high": (4.0, math.inf)}
SWD_SCALES = (1, 4, 8, 16)
SWD_DIRECTIONS = 64
METRICS = ("bstd", "dark", "bright", "low", "mid", "high", "swd")


# --- models -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Loaded:
    name: str
    model: CompVisModel
    wrap: torch.nn.Module  # k-diffusion CompVis[V]Denoiser
    table: torch.Tensor  # float32 alphas_cumprod, as the WebUI holds it
    meta: dict


def load_model(name: str, weights: Path = WEIGHTS) -> Loaded:
    """A committed reference model behind the k-diffusion wrapper the WebUI uses for it."""
    from k_diffusion.external import CompVisDenoiser, CompVisVDenoiser
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = weights / f"{name}.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
    net = TinyUNet(int(meta["width"]))
    net.load_state_dict(load_file(str(path)))
    net.eval().requires_grad_(False)
    stock = scaled_linear_alphas_cumprod()
    table = ztsnr_alphas_cumprod(stock) if meta["schedule"] == "ztsnr" else stock.to(torch.float32)
    model = CompVisModel(net, table, meta["parameterization"])
    wrap = CompVisVDenoiser(model) if meta["parameterization"] == "v" else CompVisDenoiser(model)
    return Loaded(name, model, wrap, model.alphas_cumprod, meta)


class Guided:
    """The WebUI's CFG combine on denoised predictions (one batched call for cond + uncond), then the extension's CFG
    rescale in v space when ``phi > 0``. ``cond`` is the batch's class labels; the negative is ``NULL_LABEL``."""

    def __init__(self, wrap: Callable, scale: float, phi: float) -> None:
        self.wrap, self.scale, self.phi = wrap, scale, phi

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0:
            return self.wrap(x, sigma, cond=cond)
        null = torch.full_like(cond, NULL_LABEL)
        pos, neg = self.wrap(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([cond, null])).chunk(2)
        out = neg + (pos - neg) * self.scale
        return guidance.rescale_denoised(x, sigma, pos, out, self.phi) if self.phi else out


def guided_output(model: CompVisModel, labels: torch.Tensor, scale: float, phi: float):
    """Timestep samplers: ``f(x_vp, t) -> guided model output`` (v or eps), rescaled in v by ``cfg_rescale`` (v model)."""

    def f(x: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((x.shape[0],), float(t))
        if scale == 1.0:
            return model.apply_model(x, tt, labels)
        null = torch.full_like(labels, NULL_LABEL)
        pos, neg = model.apply_model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([labels, null])).chunk(2)
        out = neg + (pos - neg) * scale
        return guidance.cfg_rescale(out, pos, phi) if phi else out

    return f


# --- schedules and samplers ---------------------------------------------------------------------------------------


def sigma_list(sampler: str, schedule: str, wrap, steps: int) -> torch.Tensor:
    """The k-diffusion sigma list (float32, descending, ending in 0) for a schedule of the grid."""
    sigmas = wrap.sigmas
    if schedule == "trailing":
        return trailing_sigmas(sigmas, steps)
    if schedule == "linspace":
        return torch.cat([sigmas[spaced_timesteps(steps, "linspace")], sigmas.new_zeros(1)])
    scheduler = WEBUI_DEFAULT[sampler] if schedule in ("builtin", "stock") else schedule
    return exact.webui_sigmas(scheduler, wrap, steps).to(torch.float32)


def ddim_timesteps(schedule: str, steps: int) -> torch.Tensor:
    """Ascending timestep list for the WebUI's DDIM loop (``len - 1`` model calls)."""
    if schedule == "trailing":
        return timestep.trailing_timesteps(steps, timestep.DDIM)
    if schedule == "linspace":
        return torch.linspace(0, 999, steps + 1, dtype=torch.float64).round().long()
    return exact.webui_ddim_timesteps(steps)  # builtin / stock: leading + 1


def run_kdiffusion(
    sampler: str, den: Callable, noise: torch.Tensor, sigmas: torch.Tensor, labels, seed: int, euler_first
):
    import k_diffusion.sampling as ks

    x = noise * sigmas[0]
    kw = {"extra_args": {"cond": labels}, "disable": True}
    gen = torch.Generator().manual_seed(seed)
    if sampler == "Euler":
        return ks.sample_euler(den, x, sigmas, **kw)
    if sampler == "Euler a":
        ns = exact._randn_noise_sampler(x, gen)
        return ks.sample_euler_ancestral(den, x, sigmas, noise_sampler=ns, **kw)
    if sampler == "DPM++ 2M":
        return ks.sample_dpmpp_2m(den, x, sigmas, **kw)
    if sampler == "DPM++ 2M SDE":
        return ks.sample_dpmpp_2m_sde(den, x, sigmas, noise_sampler=exact.BrownianNoiseSampler(x, gen), **kw)
    if sampler == "DPM++ SDE":
        return ks.sample_dpmpp_sde(den, x, sigmas, noise_sampler=exact.BrownianNoiseSampler(x, gen), **kw)
    if sampler == "Heun":
        return (with_euler_first_step(ks.sample_heun) if euler_first else ks.sample_heun)(den, x, sigmas, **kw)
    if sampler == "LMS":
        return ks.sample_lms(den, x, sigmas, **kw)
    raise ValueError(sampler)


class Counter:
    """Counts model calls (network evaluations per image, cond and uncond counted once)."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def sample(
    m: Loaded, sampler: str, schedule: str, steps: int, scale: float, phi: float, noise, labels, seed: int
) -> tuple[torch.Tensor, int, str]:
    """Generate images (``[N, 3, 16, 16]``, unclipped) for one cell; returns images, model calls, sigma summary."""
    v_model = m.meta["parameterization"] == "v"
    if sampler in TIMESTEP_SCHEDULES:
        f = Counter(guided_output(m.model, labels, scale, phi))
        if sampler == "DDIM":
            ts = ddim_timesteps(schedule, steps)
            if v_model:
                out = timestep.ddim_sample_v(lambda x, t: (f(x, t),) * 2, noise, ts, m.table)
            else:  # the WebUI's eps DDIM (x0 form, same update)
                den = Counter(Guided(m.wrap, scale, phi))
                out = exact.sample_ddim(den, noise, ts, m.table.double(), {"cond": labels}).float()
                f = den
            return out, f.calls, f"t {int(ts[-1])}..{int(ts[1])}->{int(ts[0])}"
        ns = timestep.DiscreteVPSchedule(m.table)
        calls = len(range(0, 1000, 1000 // steps)) if schedule in ("builtin", "stock") else steps
        skip = "logSNR" if schedule == "exponential" else "time_uniform"
        if v_model:
            fn = f
        else:

            def fn(x: torch.Tensor, t_input: float) -> torch.Tensor:
                a = ns.alpha(t_input / ns.total_n + 1.0 / ns.total_n) ** 2
                return guidance.v_from_eps(x, a, f(x, t_input))

        out = timestep.unipc_sample_v(fn, noise, calls, m.table, skip_type=skip)
        return out, f.calls, f"UniPC {skip}, {calls} steps"
    sig = sigma_list(sampler, schedule, m.wrap, steps)
    den = Counter(Guided(m.wrap, scale, phi))
    euler_first = sampler == "Heun" and v_model and schedule not in ("builtin", "stock")
    out = run_kdiffusion(sampler, den, noise, sig, labels, seed, euler_first)
    pos = sig[sig > 0]
    return out, den.calls, f"sigma {float(pos[0]):.4g}..{float(pos[-1]):.3g}"


# --- metrics --------------------------------------------------------------------------------------------------------


def band_masks(size: int = refdata.SIZE) -> dict[str, torch.Tensor]:
    f = torch.fft.fftfreq(size) * size
    r = (f[:, None] ** 2 + f[None, :] ** 2).sqrt()
    return {b: (r > lo) & (r <= hi) for b, (lo, hi) in BAND_EDGES.items()}


def band_power_per_image(x: torch.Tensor) -> torch.Tensor:
    """``[N, bands]``: mean power per band of each image (per-image, per-channel mean removed)."""
    spec = torch.fft.fft2(x - x.mean(dim=(2, 3), keepdim=True), norm="ortho").abs() ** 2
    spec = spec.mean(dim=1)
    return torch.stack([spec[:, m].mean(dim=1) for m in band_masks().values()], dim=1)


class Reference:
    """Held-out statistics and the fixed SWD projections."""

    def __init__(self, images: torch.Tensor, seed: int = 99) -> None:
        self.images = images
        b = refdata.brightness01(images)
        self.bstd = float(b.std())
        self.dark = float((b < DARK_BELOW).float().mean())
        self.bright = float((b > BRIGHT_ABOVE).float().mean())
        self.bands = band_power_per_image(images).mean(dim=0)
        gen = torch.Generator().manual_seed(seed)
        self.dirs = []
        for s in SWD_SCALES:
            d = torch.randn(3 * s * s, SWD_DIRECTIONS, generator=gen, dtype=torch.float64)
            self.dirs.append(d / d.norm(dim=0, keepdim=True))
        self.ref_proj = self.project(images)
        self._quantiles: dict[int, list[torch.Tensor]] = {}

    def project(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for s, d in zip(SWD_SCALES, self.dirs, strict=True):
            pooled = torch.nn.functional.adaptive_avg_pool2d(x.double(), s).flatten(1)
            out.append(pooled @ d)
        return out

    def quantiles(self, n: int) -> list[torch.Tensor]:
        if n not in self._quantiles:
            q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
            self._quantiles[n] = [torch.quantile(p, q, dim=0) for p in self.ref_proj]
        return self._quantiles[n]

    def swd(self, proj: list[torch.Tensor]) -> float:
        qs = self.quantiles(proj[0].shape[0])
        per_scale = [(p.sort(dim=0).values - q).abs().mean() for p, q in zip(proj, qs, strict=True)]
        return 100.0 * float(torch.stack(per_scale).mean())


def metrics_of(
    x: torch.Tensor, ref: Reference, boot: int, seed: int
) -> tuple[dict[str, float], dict[str, float], list[dict[str, float]]]:
    """Metrics of a batch of generated images, their bootstrap standard errors and the bootstrap draws. Cells that
    share ``seed`` (and the image count) are resampled with the same indices: their draws are paired."""
    x = torch.nan_to_num(x.float(), nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1.0, 1.0)
    b = refdata.brightness01(x)
    bands = band_power_per_image(x)
    proj = ref.project(x)

    def at(idx: torch.Tensor | None) -> dict[str, float]:
        bb = b if idx is None else b[idx]
        pb = bands if idx is None else bands[idx]
        pp = proj if idx is None else [p[idx] for p in proj]
        ratios = pb.mean(dim=0) / ref.bands
        return {
            "bstd": float(bb.std()) / ref.bstd,
            "dark": float((bb < DARK_BELOW).float().mean()),
            "bright": float((bb > BRIGHT_ABOVE).float().mean()),
            **{k: float(ratios[i]) for i, k in enumerate(BAND_EDGES)},
            "swd": ref.swd(pp),
        }

    value = at(None)
    gen = torch.Generator().manual_seed(seed)
    draws = [at(torch.randint(x.shape[0], (x.shape[0],), generator=gen)) for _ in range(boot)]
    se = {k: float(torch.tensor([d[k] for d in draws]).std()) if boot > 1 else float("nan") for k in METRICS}
    return value, se, draws


# --- the exact proxy, side by side ----------------------------------------------------------------------------------


def proxy_figures(steps: int, n: int, seed: int) -> dict[tuple[str, str], tuple[float, float]]:
    """(sampler, schedule) -> (brightness-std ratio of the mixture, high-band variance ratio of the Gaussian model) from
    bench_fidelity's exact-denoiser proxy, for the samplers it models, at CFG 1."""
    gauss = exact.GaussianPowerSpectrum()
    mixture = exact.GaussianMixtureImages.tones(4, 16)
    table = exact.builtin_ztsnr_alphas_cumprod()
    wrap = exact.make_denoiser(gauss, table, "v")
    noise = torch.randn(n, *mixture.shape, generator=torch.Generator().manual_seed(seed), dtype=exact.DTYPE)
    out = {}
    for sampler in exact.SAMPLERS:
        schedules = TIMESTEP_SCHEDULES.get(sampler, SCHEDULES)
        for schedule in schedules:
            euler_first = sampler == "Heun" and schedule != "builtin"
            if sampler == "DDIM":
                ts = ddim_timesteps(schedule, steps)
                plan = exact.ddim_plan(table, ts)
                var = exact.exact_generated_variance(
                    "DDIM", plan.sigmas, gauss.power, start_variance=plan.start_std**2, output_scale=plan.output_scale
                )
                gen = exact.sample_ddim(mixture, noise, ts, table)
            else:
                sig = sigma_list(sampler, schedule, wrap, steps).to(exact.DTYPE)
                var = exact.exact_generated_variance(sampler, sig, gauss.power, euler_first=euler_first)
                gen = exact.run_sampler(sampler, mixture, noise, sig, seed=seed + 1, euler_first=euler_first)
            bright = float(exact.brightness(gen).std()) / mixture.brightness_std()
            out[(sampler, schedule)] = (bright, gauss.band_ratios(var)["high"])
    return out


# --- the run ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    model: str
    sampler: str
    schedule: str
    steps: int
    cfg: float
    phi: float
    images: int
    calls: int
    detail: str
    value: dict[str, float]
    se: dict[str, float]
    proxy: tuple[float, float] | None = None
    draws: list[dict[str, float]] = dataclasses.field(default_factory=list, repr=False)


def headline_steps(settings: dict) -> int:
    return 20 if 20 in settings["steps"] else settings["steps"][0]


def cells(settings: dict) -> list[tuple[str, str, str, int, float, float]]:
    """The grid: eps twin (stock, phi 0) and v model (every schedule) per (steps, sampler, CFG, phi); then the finer phi
    sweep at the headline step count with the extension's default schedule (trailing)."""
    out = []
    for steps in settings["steps"]:
        for sampler in SAMPLERS:
            for cfg, phi in settings["guidance"]:
                if phi == 0:
                    out.append(("eps_stock", sampler, "stock", steps, cfg, 0.0))
                for schedule in TIMESTEP_SCHEDULES.get(sampler, SCHEDULES):
                    out.append(("vpred_ztsnr", sampler, schedule, steps, cfg, phi))
    cfgs = sorted({cfg for cfg, _ in settings["guidance"] if cfg > 1})
    for sampler in SAMPLERS:
        for cfg in cfgs:
            for phi in settings["phi_sweep"]:
                out.append(("vpred_ztsnr", sampler, "trailing", headline_steps(settings), cfg, phi))
    return out


#: Cells whose images are kept for the sample grid (model, sampler, schedule, cfg, phi) at the headline step count.
GRID_CELLS = (
    ("eps_stock", "Euler", "stock", 1.0, 0.0),
    ("vpred_ztsnr", "Euler", "trailing", 1.0, 0.0),
    ("eps_stock", "Euler", "stock", 7.5, 0.0),
    ("vpred_ztsnr", "Euler", "trailing", 7.5, 0.0),
    ("vpred_ztsnr", "Euler", "trailing", 7.5, 0.7),
)


def run(
    settings: dict, seed: int, weights: Path, log: Callable[[str], None]
) -> tuple[list[Row], Reference, Row, dict]:
    held = refdata.held_out(settings["held_out"])
    ref = Reference(held.images)
    n = settings["images"]
    models = {name: load_model(name, weights) for name in ("vpred_ztsnr", "eps_stock")}
    # the floor: as many training-split images as a cell generates, against the same held-out set
    gen = torch.Generator().manual_seed(seed + 5)
    floor_labels = torch.arange(n) % len(refdata.EXPOSURE)
    floor_imgs = refdata.expose(refdata.base_patches(n, "train", seed + 4), floor_labels, gen)
    fv, fse, _ = metrics_of(floor_imgs, ref, settings["boot"], seed)
    floor = Row("data", "-", "train split", 0, 1.0, 0.0, n, 0, "no model", fv, fse)
    labels = torch.arange(n) % len(refdata.EXPOSURE)
    rows, kept = [], {"held-out data": held.images[:n]}
    todo = cells(settings)
    t0 = time.perf_counter()
    for i, (name, sampler, schedule, steps, cfg, phi) in enumerate(todo):
        cell_seed = seed * 1000 + steps  # shared by every schedule and guidance setting of (sampler, steps)
        noise = torch.randn(n, *refdata_shape(), generator=torch.Generator().manual_seed(cell_seed))
        with torch.inference_mode():
            out, calls, detail = sample(models[name], sampler, schedule, steps, cfg, phi, noise, labels, cell_seed)
        value, se, draws = metrics_of(out, ref, settings["boot"], cell_seed)  # paired within (sampler, steps)
        rows.append(Row(name, sampler, schedule, steps, cfg, phi, n, calls, detail, value, se, draws=draws))
        if steps == headline_steps(settings) and (name, sampler, schedule, cfg, phi) in GRID_CELLS:
            kept[f"{name} {sampler} {schedule}, CFG {cfg:g}" + (f" phi {phi:g}" if cfg > 1 else "")] = out
        if (i + 1) % 50 == 0:
            log(f"  {i + 1}/{len(todo)} cells, {time.perf_counter() - t0:.0f} s")
    return rows, ref, floor, kept


def refdata_shape() -> tuple[int, int, int]:
    return (3, refdata.SIZE, refdata.SIZE)


# --- output -----------------------------------------------------------------------------------------------------------


def fmt(v: float, se: float) -> str:
    return f"{v:.2f}±{se:.2f}"


def format_rows(rows: Sequence[Row], steps: int, cfg: float, phi: float) -> list[str]:
    head = (
        f"{'model':11s} {'sampler':12s} {'schedule':11s} {'calls':>5s}  {'bstd':>9s} {'dark':>9s} {'bright':>9s} "
        f"{'low':>9s} {'mid':>9s} {'high':>9s} {'swd':>9s}  {'proxy bstd/high':>15s}  detail"
    )
    lines = [head, "-" * len(head)]
    last = None
    for r in rows:
        if r.steps != steps or r.cfg != cfg or r.phi != phi:
            continue
        if last is not None and r.sampler != last:
            lines.append("")
        last = r.sampler
        vals = " ".join(f"{fmt(r.value[k], r.se[k]):>9s}" for k in METRICS)
        proxy = f"{r.proxy[0]:.2f}/{r.proxy[1]:.2f}" if r.proxy else "-"
        lines.append(f"{r.model:11s} {r.sampler:12s} {r.schedule:11s} {r.calls:5d}  {vals}  {proxy:>15s}  {r.detail}")
    return lines


def error(metric: str, v: float) -> float:
    """Distance from perfect: |ratio - 1| for the ratios, the value itself for the SWD."""
    return v if metric == "swd" else abs(v - 1.0)


ACCEPT_METRICS = ("bstd", "high", "swd")


def within(metric: str, default: Row, best: Row) -> tuple[bool, bool]:
    """(within 10 % of the best, and if not: is the gap larger than 2 paired bootstrap SE). Ratios: |r - 1| at most
    0.10 above the best schedule's; SWD: at most 10 % above the best schedule's."""
    e_def, e_best = error(metric, default.value[metric]), error(metric, best.value[metric])
    ok = e_def <= e_best * 1.10 + 1e-12 if metric == "swd" else e_def <= e_best + 0.10
    diffs = [
        error(metric, a[metric]) - error(metric, b[metric]) for a, b in zip(default.draws, best.draws, strict=False)
    ]
    se = float(torch.tensor(diffs).std()) if len(diffs) > 1 else 0.0
    return ok, e_def - e_best > 2 * se


def candidates(rows: Sequence[Row], sampler: str, steps: int, cfg: float, phi: float) -> dict[str, Row]:
    return {
        r.schedule: r
        for r in rows
        if r.model == "vpred_ztsnr" and r.sampler == sampler and (r.steps, r.cfg, r.phi) == (steps, cfg, phi)
    }


#: The extension's default spacing (``Timestep spacing: Auto``), resolved per sampler by the plan's own table.
AUTO = "auto"


def resolve(schedule: str, sampler: str) -> str:
    """The grid schedule that ``schedule`` means for ``sampler``: ``auto`` is :func:`lib_vpred.plan.auto_spacing`
    (``"trailing"`` or ``"exponential"``, the grid's names for the same sigmas); timestep samplers take trailing."""
    if schedule != AUTO:
        return schedule
    return "trailing" if sampler in TIMESTEP_SCHEDULES else plan.auto_spacing(sampler)


def verdicts(rows: Sequence[Row], steps: int, cfg: float, phi: float, default: str = "trailing") -> list[str]:
    """Per sampler: the best schedule per acceptance metric, and whether ``default`` (a schedule, or ``auto``) is within
    10 % of it. A miss is marked ``MISS`` when the gap exceeds 2 paired bootstrap SE, ``miss~`` when it is within the
    sampling noise."""
    lines = [f"best schedule per sampler at {steps} steps, CFG {cfg:g}, phi {phi:g} (default under test: {default}):"]
    for sampler in SAMPLERS:
        cand = candidates(rows, sampler, steps, cfg, phi)
        chosen = resolve(default, sampler)
        if chosen not in cand:
            continue
        parts, ok_all = [], True
        for metric in ACCEPT_METRICS:
            best = min(cand.values(), key=lambda r, m=metric: error(m, r.value[m]))
            ok, significant = within(metric, cand[chosen], best)
            ok_all &= ok
            mark = "ok" if ok else ("MISS" if significant else "miss~")
            parts.append(
                f"{metric} best {best.schedule} {best.value[metric]:.2f} vs {cand[chosen].value[metric]:.2f} {mark}"
            )
        name = f"{sampler} ({chosen})" if default == AUTO else sampler
        lines.append(f"  {name:26s} {'ALL OK' if ok_all else 'miss  '}  " + "; ".join(parts))
    return lines


#: The grid's schedules that are WebUI schedule types, by their label (for the plan's warning rule).
SCHEDULE_TYPE_LABELS = {"karras": "Karras", "exponential": "Exponential", "sgm_uniform": "SGM Uniform"}


def pass_counts(rows: Sequence[Row], settings: dict) -> list[str]:
    """For every sampler and schedule: in how many (steps, CFG, phi) settings of the grid the schedule is within 10 %
    of that setting's best schedule on all of bstd, high and swd (misses within 2 paired SE forgiven in brackets)."""
    settings_list = [(st, cfg, phi) for st in settings["steps"] for cfg, phi in settings["guidance"]]
    head = f"{'sampler':12s} " + " ".join(f"{s:>12s}" for s in (*SCHEDULES, AUTO))
    lines = [
        f"settings (of {len(settings_list)}: steps x guidance) in which a schedule is within 10 % of the best on "
        "bstd, high and swd [counting misses within 2 paired SE as passes]; ! = the plan warns about this schedule "
        "type with 'Timestep spacing: Schedule type' (lib_vpred.plan.schedule_type_loses_detail); auto = the "
        "extension's default (Timestep spacing: Auto):",
        head,
    ]
    for sampler in SAMPLERS:
        counts = {}
        for schedule in TIMESTEP_SCHEDULES.get(sampler, SCHEDULES):
            strict = lenient = 0
            for st, cfg, phi in settings_list:
                cand = candidates(rows, sampler, st, cfg, phi)
                if schedule not in cand:
                    continue
                res = [
                    within(m, cand[schedule], min(cand.values(), key=lambda r, m=m: error(m, r.value[m])))
                    for m in ACCEPT_METRICS
                ]
                strict += all(ok for ok, _ in res)
                lenient += all(ok or not sig for ok, sig in res)
            label = None if sampler in TIMESTEP_SCHEDULES else SCHEDULE_TYPE_LABELS.get(schedule)  # no schedule types
            warned = label is not None and plan.schedule_type_loses_detail(label, sampler)
            counts[schedule] = f"{strict} [{lenient}]" + ("!" if warned else "")
        chosen = resolve(AUTO, sampler)
        counts[AUTO] = f"{counts.get(chosen, '-').rstrip('!')} ({chosen[:5]})"
        lines.append(f"{sampler:12s} " + " ".join(f"{counts.get(s, '-'):>12s}" for s in (*SCHEDULES, AUTO)))
    return lines


def best_phi(rows: Sequence[Row], steps: int) -> list[str]:
    """Per sampler (trailing) and CFG > 1: SWD for every phi measured at ``steps``, and the phi with the lowest."""
    lines = [f"CFG rescale at {steps} steps, trailing: SWD (x100, lower is better) per phi; * = lowest"]
    for sampler in SAMPLERS:
        parts = []
        for cfg in sorted({r.cfg for r in rows if r.cfg > 1}):
            by = {
                r.phi: r
                for r in rows
                if r.model == "vpred_ztsnr"
                and r.sampler == sampler
                and r.schedule == "trailing"
                and (r.cfg, r.steps) == (cfg, steps)
            }
            if not by:
                continue
            best = min(by, key=lambda p, by=by: by[p].value["swd"])
            vals = " ".join(f"{p:g}:{by[p].value['swd']:.1f}{'*' if p == best else ''}" for p in sorted(by))
            parts.append(f"CFG {cfg:g} [{vals}]")
        lines.append(f"  {sampler:12s} " + "  ".join(parts))
    return lines


def write_csv(rows: Sequence[Row], floor: Row, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["model", "sampler", "schedule", "steps", "cfg", "phi", "images", "model_calls", "detail",
             *[c for k in METRICS for c in (k, f"{k}_se")], "proxy_bstd", "proxy_high"]
        )  # fmt: skip
        for r in [floor, *rows]:
            w.writerow(
                [r.model, r.sampler, r.schedule, r.steps, r.cfg, r.phi, r.images, r.calls, r.detail,
                 *[f"{x:.4f}" for k in METRICS for x in (r.value[k], r.se[k])],
                 *([f"{x:.4f}" for x in r.proxy] if r.proxy else ["", ""])]
            )  # fmt: skip


def plot(rows: Sequence[Row], floor: Row, steps: int, out: Path) -> list[Path]:
    """Bar charts at ``steps``: per sampler and schedule, bstd / high / swd at CFG 1 and at CFG 7.5 phi 0.7; and SWD
    against phi per sampler (trailing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    colours = dict(zip((*SCHEDULES, "stock"), plt.cm.tab10.colors, strict=False))
    guid = sorted({(r.cfg, r.phi) for r in rows})
    panels = [g for g in ((1.0, 0.0), (7.5, 0.7)) if g in guid]
    fig, axes = plt.subplots(3, len(panels), figsize=(8 * len(panels), 11.5), squeeze=False)
    for col, (cfg, phi) in enumerate(panels):
        for row_i, metric in enumerate(("bstd", "high", "swd")):
            ax = axes[row_i][col]
            width = 0.8 / (len(SCHEDULES) + 1)
            for j, schedule in enumerate(("stock", *SCHEDULES)):
                xs, ys, es = [], [], []
                for i, sampler in enumerate(SAMPLERS):
                    r = next(
                        (
                            r
                            for r in rows
                            if r.sampler == sampler
                            and r.schedule == schedule
                            and (r.steps, r.cfg, r.phi) == (steps, cfg, 0.0 if schedule == "stock" else phi)
                        ),
                        None,
                    )
                    if r is not None:
                        xs.append(i + (j - len(SCHEDULES) / 2) * width)
                        ys.append(r.value[metric])
                        es.append(r.se[metric])
                label = "eps twin, stock SD" if schedule == "stock" else schedule
                ax.bar(xs, ys, width, yerr=es, label=label, color=colours[schedule], capsize=1.5)
            ref = floor.value["swd"] if metric == "swd" else 1.0
            ax.axhline(ref, color="k", lw=1, ls="--")
            ax.set_xticks(range(len(SAMPLERS)), SAMPLERS, rotation=30, fontsize=8)
            name = {"bstd": "brightness-std ratio", "high": "high-band power ratio", "swd": "SWD x100 (data floor --)"}
            twin = " (eps twin: phi 0)" if cfg > 1 and phi else ""
            ax.set_title(f"{name[metric]}, {steps} steps, CFG {cfg:g}" + (f", phi {phi:g}{twin}" if cfg > 1 else ""))
            if metric == "swd":
                ax.set_ylim(0, None)
    axes[0][0].legend(fontsize=7, ncol=7, loc="lower center", bbox_to_anchor=(0.5, 1.08))
    fig.tight_layout()
    p = out / f"trained_{steps}steps.png"
    fig.savefig(p, dpi=80)
    plt.close(fig)
    paths.append(p)
    cfgs = sorted({r.cfg for r in rows if r.cfg > 1})
    if cfgs:
        fig, axes = plt.subplots(1, len(cfgs), figsize=(7 * len(cfgs), 4.5), squeeze=False)
        for ax, cfg in zip(axes[0], cfgs, strict=True):
            for i, sampler in enumerate(SAMPLERS):
                pts = sorted(
                    (r.phi, r.value["swd"], r.se["swd"])
                    for r in rows
                    if r.model == "vpred_ztsnr"
                    and r.sampler == sampler
                    and r.schedule == "trailing"
                    and (r.steps, r.cfg) == (steps, cfg)
                )
                if pts:
                    xs, ys, es = zip(*pts, strict=True)
                    ax.errorbar(xs, ys, yerr=es, label=sampler, color=plt.cm.tab10.colors[i], marker="o", capsize=2)
            ax.axhline(floor.value["swd"], color="k", lw=1, ls="--")
            ax.set_xlabel("CFG rescale phi")
            ax.set_ylabel("SWD x100 to held-out data")
            ax.set_title(f"CFG {cfg:g}, {steps} steps, trailing")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        p = out / f"trained_phi_{steps}steps.png"
        fig.savefig(p, dpi=80)
        plt.close(fig)
        paths.append(p)
    return paths


def plot_loss(weights: Path, path: Path) -> Path | None:
    """Training loss curves from ``<weights>/<model>_loss.csv`` (written by train.py)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = sorted(weights.glob("*_loss.csv"))
    if not files:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for f in files:
        with f.open() as fh:
            rec = list(csv.DictReader(fh))
        ax.plot([int(r["step"]) for r in rec], [float(r["loss"]) for r in rec], label=f.stem.removesuffix("_loss"))
    ax.set_yscale("log")
    ax.set_xlabel("training step (batch 128)")
    ax.set_ylabel("MSE loss (mean per 100 steps)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def image_grid(kept: dict[str, torch.Tensor], path: Path, per_row: int = 24) -> Path:
    """One row of images per kept cell (first ``per_row`` images: classes dark, mid, bright repeating), x4 upscaled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(kept), 1, figsize=(per_row * 0.45, 0.75 * len(kept) + 0.3), squeeze=False)
    for ax, (label, imgs) in zip(axes[:, 0], kept.items(), strict=True):
        x = ((imgs[:per_row].float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
        strip = torch.cat(list(x), dim=1)
        ax.imshow(strip.numpy(), interpolation="nearest")
        ax.set_title(label, fontsize=8, loc="left")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 10 steps, two guidance settings, 9 images")
    parser.add_argument("--images", type=int, help="images per cell")
    parser.add_argument("--steps", type=int, nargs="+", help="step counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--no-proxy", action="store_true", help="skip the exact-proxy columns")
    parser.add_argument("--out", type=Path, default=ROOT / "out", help="output folder (created if missing)")
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    if args.images:
        settings["images"] = args.images
    if args.steps:
        settings["steps"] = tuple(args.steps)
    torch.set_num_threads(1)
    exact.keep_freed_memory()
    start = time.perf_counter()
    rows, ref, floor, kept = run(settings, args.seed, args.weights, lambda s: print(s, flush=True))
    headline = headline_steps(settings)
    if not args.no_proxy:
        proxy = proxy_figures(headline, settings["proxy_samples"], args.seed)
        for r in rows:
            if r.model == "vpred_ztsnr" and r.steps == headline and r.cfg == 1.0:
                r.proxy = proxy.get((r.sampler, r.schedule))
    print(
        "sd-webui-vpred fidelity benchmark on TRAINED reference models (bench/reference_model): "
        f"{settings['images']} images per cell (balanced exposure classes), held-out set {settings['held_out']} images; "
        "value±bootstrap SE; ratios: 1 = the held-out data's; swd x100, lower is better."
        + (" (quick: not representative)" if args.quick else "")
    )
    print(
        f"held-out data: brightness std {ref.bstd:.3f}, dark share {ref.dark:.2f}, bright share {ref.bright:.2f}; "
        f"data floor (training-split images): swd {fmt(floor.value['swd'], floor.se['swd'])}, "
        f"bstd {fmt(floor.value['bstd'], floor.se['bstd'])}, high {fmt(floor.value['high'], floor.se['high'])}"
    )
    for steps in settings["steps"]:
        for cfg, phi in settings["guidance"]:
            print(f"\n== {steps} steps, CFG {cfg:g}" + (f", phi {phi:g}" if cfg > 1 else "") + " ==")
            for line in format_rows(rows, steps, cfg, phi):
                print(line)
    print()
    for default in ("trailing", AUTO):
        for cfg, phi in settings["guidance"]:
            for line in verdicts(rows, headline, cfg, phi, default):
                print(line)
    for line in pass_counts(rows, settings):
        print(line)
    for line in best_phi(rows, headline):
        print(line)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, floor, args.out / "trained.csv")
    plots = [*plot(rows, floor, headline, args.out), image_grid(kept, args.out / "trained_samples.png")]
    loss_plot = plot_loss(args.weights, args.out / "trained_loss.png")
    plots += [loss_plot] if loss_plot else []
    print(f"\ncsv: {args.out / 'trained.csv'} ({len(rows)} rows)\nplots: {', '.join(map(str, plots))}")
    print(f"elapsed: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
