"""Fidelity benchmark (ideal-denoiser proxy): how much of the data's variance each sampler x schedule reproduces.

One command, no GPU, no WebUI, no weights. For samplers Euler, Euler a, DPM++ 2M, DPM++ SDE, Heun and DDIM at 10, 20, 30
and 50 steps it compares

(i)   stock SD: the SD1.5 table (sigma_max 14.61), eps model, the WebUI's default scheduler for the sampler (Euler,
      Euler a, Heun: Uniform; DPM++ 2M / SDE: Karras; DDIM: its own leading+1 timesteps);
(ii)  the WebUI built-in "Noise schedule: Zero Terminal SNR" (sigma_max 4518.8) with each k-diffusion scheduler
      (Uniform, Karras, Exponential, Simple, SGM Uniform, Beta, KL Optimal, Align Your Steps; formulas re-derived
      from A1111 v1.10.1 ``sd_schedulers.py`` in :func:`exact.webui_sigmas`). DDIM ignores the scheduler: one row;
(iii) sd-webui-vpred's default: ZTSNR + trailing timesteps.

Metrics, all "generated / true" (1.00 = the right amount of variation):

- Gaussian model (:class:`exact.GaussianPowerSpectrum`, 4x64x64, power ~ 1/|f|^2 plus a strong DC term): variance
  ratio per frequency band, DC (brightness) / low (|f| <= 4) / mid (<= 16) / high. Computed **exactly** by
  :func:`exact.exact_generated_variance` (stochastic samplers: the exact expectation, checked against sampling
  by the unit tests and the cross-check printed below).
- Mixture model (:class:`exact.GaussianMixtureImages`, 4x16x16 latent-like, dark / mid / bright templates):
  brightness-std ratio, sampled (fixed seeds).

The "model" is the exact posterior mean, so this measures schedules and samplers only, never a network.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for `exact` when imported from elsewhere
import exact

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # clip-anytorch, imported by k_diffusion

#: Repository root; the default output folder is ``<root>/out`` (git-ignored).
ROOT = Path(__file__).resolve().parents[1]

#: The WebUI's k-diffusion schedulers benchmarked with the built-in ZTSNR table (webui-hooks.md section 4 table).
BUILTIN_SCHEDULERS: tuple[str, ...] = (
    "uniform",
    "karras",
    "exponential",
    "simple",
    "sgm_uniform",
    "beta",
    "kl_optimal",
    "align_your_steps",
)

FULL = {"steps": (10, 20, 30, 50), "mixture_samples": 256, "check_samples": 48}
QUICK = {"steps": (10,), "mixture_samples": 32, "check_samples": 0}

#: Mixture used for the brightness metric: latent-like 4x16x16 (4 channels like SD's VAE latent).
MIXTURE_SHAPE = (4, 16)

#: A band whose variance ratio is above this (or below 1/(5x) this) is listed as "far off" in the summary.
FAR_OFF = 2.0

#: Plot range for the log2 y axis: ratios outside [1/16, 16] are drawn at the edge with a marker.
PLOT_LOG2_RANGE = 4


@dataclasses.dataclass(frozen=True)
class Config:
    """A row group: which table and which scheduler ("default" = the sampler's WebUI default)."""

    key: str
    label: str
    ztsnr: bool
    scheduler: str
    #: Heun's first step as Euler, as the extension runs Heun under ZTSNR (lib_vpred.sampling.with_euler_first_step).
    euler_first: bool = False


def configs_for(sampler: str) -> list[Config]:
    """(i), (ii) for every scheduler (one row for DDIM, which ignores it) and (iii)."""
    if sampler == "DDIM":
        return [
            Config("stock", "stock SD [DDIM leading+1]", False, "ddim_leading"),
            Config("builtin", "built-in ZTSNR [DDIM leading+1]", True, "ddim_leading"),
            Config("vpred", "vpred: ZTSNR + trailing [DDIM]", True, "ddim_trailing"),
        ]
    default = exact.DEFAULT_SCHEDULER[sampler]
    rows = [Config("stock", f"stock SD [{default}]", False, default)]
    rows += [Config(f"builtin-{s}", f"built-in ZTSNR [{s}]", True, s) for s in BUILTIN_SCHEDULERS]
    if sampler == "Heun":
        rows.append(Config("vpred", "vpred: ZTSNR + trailing, Euler 1st step", True, "trailing", euler_first=True))
    else:
        rows.append(Config("vpred", "vpred: ZTSNR + trailing", True, "trailing"))
    return rows


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sigmas and start / output scaling of one run (k-diffusion samplers: start std sigma_0, scale 1)."""

    sigmas: torch.Tensor
    start_std: float
    output_scale: float = 1.0
    timesteps: torch.Tensor | None = None  # DDIM only


def make_plan(sampler: str, cfg: Config, steps: int, wrap, table: torch.Tensor) -> Plan:
    """Sigma list as the WebUI (or this extension) would build it for ``sampler``, ``cfg`` and ``steps``."""
    if sampler == "DDIM":
        ts = (
            exact.webui_ddim_timesteps(steps)
            if cfg.scheduler == "ddim_leading"
            else exact.trailing_ddim_timesteps(steps)
        )
        p = exact.ddim_plan(table, ts)
        return Plan(p.sigmas, p.start_std, p.output_scale, ts)
    sig = exact.webui_sigmas(cfg.scheduler, wrap, steps)
    return Plan(sig, float(sig[0]))


def mixture_brightness_ratio(
    sampler: str,
    plan: Plan,
    model: exact.GaussianMixtureImages,
    table: torch.Tensor,
    noise: torch.Tensor,
    seed: int,
    euler_first: bool = False,
) -> float:
    """Sample the mixture with the exact denoiser (called directly: the CompVis wrappers reproduce it to ~1e-14)."""
    if sampler == "DDIM":
        out = exact.sample_ddim(model, noise, plan.timesteps, table)
    else:
        out = exact.run_sampler(sampler, model, noise, plan.sigmas, seed=seed, euler_first=euler_first)
    return float(exact.brightness(out).std()) / model.brightness_std()


@dataclasses.dataclass
class Row:
    sampler: str
    config: Config
    steps: int
    bands: dict[str, float]
    brightness: float
    first_sigmas: str


def run(settings: dict, seed: int) -> tuple[list[Row], dict]:
    """Every (sampler, config, steps): exact Gaussian band ratios and the sampled mixture brightness ratio."""
    gauss = exact.GaussianPowerSpectrum()
    mixture = exact.GaussianMixtureImages.tones(*MIXTURE_SHAPE)
    tables = {False: exact.stock_alphas_cumprod(), True: exact.builtin_ztsnr_alphas_cumprod()}
    wraps = {z: exact.make_denoiser(gauss, tables[z], "v" if z else "eps") for z in tables}
    n = settings["mixture_samples"]
    noise = torch.randn(n, *mixture.shape, generator=torch.Generator().manual_seed(seed), dtype=exact.DTYPE)
    rows: list[Row] = []
    for sampler in exact.SAMPLERS:
        for cfg in configs_for(sampler):
            for steps in settings["steps"]:
                plan = make_plan(sampler, cfg, steps, wraps[cfg.ztsnr], tables[cfg.ztsnr])
                var = exact.exact_generated_variance(
                    sampler,
                    plan.sigmas,
                    gauss.power,
                    start_variance=plan.start_std**2,
                    output_scale=plan.output_scale,
                    euler_first=cfg.euler_first,
                )
                b = mixture_brightness_ratio(
                    sampler, plan, mixture, tables[cfg.ztsnr], noise, seed + 1, euler_first=cfg.euler_first
                )
                first = ", ".join(f"{float(s):.4g}" for s in plan.sigmas[:3])
                rows.append(Row(sampler, cfg, steps, gauss.band_ratios(var), b, first))
    return rows, {"gauss": gauss, "mixture": mixture, "tables": tables, "wraps": wraps}


def cross_check(settings: dict, info: dict, seed: int) -> list[str]:
    """Sampled vs exact band ratios for every sampler (vpred config, 10 steps) on the Gaussian model."""
    n = settings["check_samples"]
    if n <= 0:
        return []
    gauss, tables, wraps = info["gauss"], info["tables"], info["wraps"]
    noise = torch.randn(n, *gauss.shape, generator=torch.Generator().manual_seed(seed + 7), dtype=exact.DTYPE)
    lines = []
    for sampler in exact.SAMPLERS:
        cfg = configs_for(sampler)[-1]
        plan = make_plan(sampler, cfg, 10, wraps[True], tables[True])
        if sampler == "DDIM":
            out = exact.sample_ddim(wraps[True], noise, plan.timesteps, tables[True], {"cond": None})
        else:
            out = exact.run_sampler(
                sampler,
                wraps[True],
                noise,
                plan.sigmas,
                seed=seed + 8,
                extra_args={"cond": None},
                euler_first=cfg.euler_first,
            )
        got = gauss.band_ratios(gauss.empirical_variance(out))
        want = gauss.band_ratios(
            exact.exact_generated_variance(
                sampler,
                plan.sigmas,
                gauss.power,
                start_variance=plan.start_std**2,
                output_scale=plan.output_scale,
                euler_first=cfg.euler_first,
            )
        )
        pairs = "  ".join(f"{b} {got[b]:.3f}/{want[b]:.3f}" for b in exact.BANDS)
        lines.append(f"  {sampler:9s} sampled/exact: {pairs}")
    return lines


def format_table(rows: list[Row]) -> str:
    head = (
        f"{'sampler':9s} {'configuration':34s} {'steps':>5s} {'DC':>8s} {'low':>8s} {'mid':>8s} {'high':>8s} "
        f"{'bright-std':>10s}  first sigmas"
    )
    lines = [head, "-" * len(head)]
    multi_steps = len({r.steps for r in rows}) > 1
    last: object = None
    for r in rows:
        group = (r.sampler, r.config.key) if multi_steps else r.sampler
        if last is not None and group != last:
            lines.append("")
        last = group
        vals = " ".join(f"{r.bands[b]:8.3g}" for b in exact.BANDS)
        lines.append(f"{r.sampler:9s} {r.config.label:34s} {r.steps:5d} {vals} {r.brightness:10.2f}  {r.first_sigmas}")
    return "\n".join(lines)


def summary(rows: list[Row], steps: int) -> list[str]:
    """Key figures at one step count: stock vs built-in default vs vpred, and every far-off (> 2x or < 0.1x) band."""
    lines = [f"key figures at {steps} steps (DC variance ratio / high-band variance ratio / brightness-std ratio):"]
    by = {(r.sampler, r.config.key, r.steps): r for r in rows}
    for sampler in exact.SAMPLERS:
        default = "builtin" if sampler == "DDIM" else f"builtin-{exact.DEFAULT_SCHEDULER[sampler]}"
        parts = []
        for key, name in (("stock", "stock"), (default, "built-in"), ("vpred", "vpred")):
            r = by.get((sampler, key, steps))
            if r is not None:
                parts.append(f"{name} {r.bands['dc']:.2f}/{r.bands['high']:.2f}/{r.brightness:.2f}")
        lines.append(f"  {sampler:9s} " + "   ".join(parts))
    off = [
        r
        for r in rows
        if r.steps == steps and any(v > FAR_OFF or v < 1 / (5 * FAR_OFF) for v in r.bands.values()) and r.config.ztsnr
    ]
    if off:
        lines.append(
            f"far off at {steps} steps (a band ratio > {FAR_OFF:g} or < {1 / (5 * FAR_OFF):g}), ZTSNR configurations:"
        )
        for r in off:
            vals = "/".join(f"{r.bands[b]:.3g}" for b in exact.BANDS)
            lines.append(f"  {r.sampler:9s} {r.config.label:34s} DC/low/mid/high {vals}")
    return lines


def write_csv(rows: list[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["sampler", "config", "table", "scheduler", "steps", *[f"var_ratio_{b}" for b in exact.BANDS],
             "brightness_std_ratio", "gaussian_method", "first_sigmas"]
        )  # fmt: skip
        for r in rows:
            method = "exact_expectation" if r.sampler in exact.STOCHASTIC_SAMPLERS else "exact"
            w.writerow(
                [r.sampler, r.config.key, "ztsnr" if r.config.ztsnr else "stock", r.config.scheduler, r.steps,
                 *[f"{r.bands[b]:.6g}" for b in exact.BANDS], f"{r.brightness:.4f}", method, r.first_sigmas]
            )  # fmt: skip


# --- plots (Pillow only) -------------------------------------------------------------------------------------------

PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (0, 0, 0),
)

#: Configurations drawn with thicker lines: the two this benchmark is about.
HIGHLIGHT: frozenset[str] = frozenset({"stock", "vpred"})


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def legend_label(key: str) -> str:
    """Legend text for a config key (the same key means the same configuration in every panel)."""
    if key == "stock":
        return "stock SD [sampler default]"
    if key == "vpred":
        return "vpred: ZTSNR + trailing"
    if key == "builtin":
        return "built-in ZTSNR [DDIM leading+1]"
    return f"built-in ZTSNR [{key.removeprefix('builtin-')}]"


def plot_metric(rows: list[Row], metric: str, steps: Sequence[int], path: Path) -> None:
    """One PNG: a panel per sampler, ratio (log2 axis) vs steps, one line per configuration."""
    from PIL import Image, ImageDraw

    panel_w, panel_h, margin, cols = 420, 300, 50, 3
    samplers = list(exact.SAMPLERS)
    nrows = math.ceil(len(samplers) / cols)
    legend_h = 90
    width, height = cols * panel_w, nrows * panel_h + legend_h + 30
    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    title = {
        "dc": "DC (brightness) variance ratio, Gaussian model, exact",
        "low": "low-frequency variance ratio, Gaussian model, exact",
        "mid": "mid-frequency variance ratio, Gaussian model, exact",
        "high": "high-frequency variance ratio, Gaussian model, exact",
        "brightness": "brightness-std ratio, mixture model, sampled",
    }[metric]
    d.text((10, 6), f"{title} (ideal-denoiser proxy; 1 = perfect)", fill=(0, 0, 0), font=_font(16))
    font = _font(12)
    keys = list(dict.fromkeys(r.config.key for r in rows))
    labels = {k: legend_label(k) for k in keys}
    color = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}
    lo, hi = -PLOT_LOG2_RANGE, PLOT_LOG2_RANGE
    s_min, s_max = min(steps), max(steps)
    for idx, sampler in enumerate(samplers):
        ox, oy = (idx % cols) * panel_w, 30 + (idx // cols) * panel_h
        x0, y0, x1, y1 = ox + margin, oy + 20, ox + panel_w - 15, oy + panel_h - 35
        d.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
        d.text((x0, oy + 3), sampler, fill=(0, 0, 0), font=_font(14))

        def sx(s: float, x0: int = x0, x1: int = x1) -> float:
            return x0 + (x1 - x0) * (0.5 if s_max == s_min else (s - s_min) / (s_max - s_min))

        def sy(v: float, y0: int = y0, y1: int = y1) -> float:
            lv = min(max(math.log2(max(v, 1e-30)), lo), hi)
            return y1 - (y1 - y0) * (lv - lo) / (hi - lo)

        for e in range(lo, hi + 1):
            y = sy(2.0**e)
            d.line((x0, y, x1, y), fill=(200, 200, 200) if e else (0, 0, 0), width=1)
            d.text((ox + 5, y - 7), f"{2.0**e:g}", fill=(0, 0, 0), font=font)
        for s in steps:
            d.text((sx(s) - 8, y1 + 5), str(s), fill=(0, 0, 0), font=font)
        d.text(((x0 + x1) / 2 - 15, y1 + 18), "steps", fill=(0, 0, 0), font=font)
        for key in sorted(keys, key=lambda k: k in HIGHLIGHT):  # the highlighted two on top
            pts = [
                (sx(r.steps), sy(r.brightness if metric == "brightness" else r.bands[metric]), r)
                for r in rows
                if r.sampler == sampler and r.config.key == key
            ]
            if not pts:
                continue
            c = color[key]
            if len(pts) > 1:
                d.line([(x, y) for x, y, _ in pts], fill=c, width=4 if key in HIGHLIGHT else 2)
            for x, y, r in pts:
                v = r.brightness if metric == "brightness" else r.bands[metric]
                clipped = not 2.0**lo <= v <= 2.0**hi
                rad = 5 if clipped else 3
                d.ellipse((x - rad, y - rad, x + rad, y + rad), outline=c, fill=None if clipped else c, width=2)
    # legend
    ly = 30 + nrows * panel_h + 5
    d.text((10, ly), "hollow markers: off the axis (clipped)", fill=(0, 0, 0), font=font)
    for i, key in enumerate(keys):
        lx, lyy = 10 + (i % 4) * (width // 4), ly + 18 + (i // 4) * 18
        d.line((lx, lyy + 7, lx + 25, lyy + 7), fill=color[key], width=3)
        d.text((lx + 30, lyy), labels[key], fill=(0, 0, 0), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 10 steps, few samples (< 20 s)")
    parser.add_argument("--steps", type=int, nargs="+", help="step counts")
    parser.add_argument("--samples", type=int, help="mixture samples per configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "out", help="output folder (created if missing)")
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    if args.steps:
        settings["steps"] = tuple(args.steps)
    if args.samples:
        settings["mixture_samples"] = args.samples
    exact.keep_freed_memory()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small float64 tensors: one thread is faster, and far faster on a shared machine
    start = time.perf_counter()
    try:
        rows, info = run(settings, args.seed)
        check = cross_check(settings, info, args.seed)
    finally:
        torch.set_num_threads(threads)
    gauss, mixture = info["gauss"], info["mixture"]
    print(
        "sd-webui-vpred fidelity benchmark. IDEAL-DENOISER PROXY: the model is the exact posterior mean of a known "
        "distribution (no network), so only samplers and schedules differ.\n"
        f"Gaussian model {'x'.join(map(str, gauss.shape))}, power ~ 1/|f|^{gauss.alpha:g} + DC "
        f"(sqrt P_DC = {float(gauss.power[0, 0, 0]) ** 0.5:.0f} vs stock sigma_max "
        f"{float(info['wraps'][False].sigmas[-1]):.2f}): per-band generated/true variance, exact (Euler a, DPM++ SDE: "
        f"exact expectation).\nMixture {'x'.join(map(str, mixture.shape))} (tones "
        f"{', '.join(f'{t:+.1f}' for t in exact.TONES)}): brightness-std ratio from {settings['mixture_samples']} "
        f"samples, seed {args.seed}. 1.00 = perfect everywhere.\n"
    )
    print(format_table(rows))
    print()
    for line in summary(rows, 20 if 20 in settings["steps"] else settings["steps"][0]):
        print(line)
    if check:
        print(f"\ncross-check, {settings['check_samples']} sampled images vs exact (vpred config, 10 steps):")
        for line in check:
            print(line)
    out = args.out
    write_csv(rows, out / "fidelity.csv")
    plots = []
    for metric in (*exact.BANDS, "brightness"):
        p = out / f"fidelity_{metric}.png"
        plot_metric(rows, metric, settings["steps"], p)
        plots.append(p)
    print(f"\ncsv: {out / 'fidelity.csv'}\nplots: {', '.join(str(p) for p in plots)}")
    print(f"elapsed: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
