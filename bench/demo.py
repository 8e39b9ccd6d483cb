"""Dynamic-range demo (README quick start, ``bash tools/dev.sh demo``): stock SD vs zero terminal SNR, with an ideal model.

No GPU, WebUI or weights. The "model" is the exact posterior mean of a known image distribution
(:class:`exact.GaussianMixtureImages`: 3x32x32 images around very dark, mid-tone and very bright templates), so every
difference below comes from the sampling schedule, not from a network (arXiv 2305.08891, Sec. 3.1 and 3.3-3.4):

(a) stock SD: the SD1.5 table (sigma_max 14.61), eps model, the WebUI's default scheduler for the sampler, started from
    ``noise * 14.61`` although the true x_T would still contain the image's brightness;
(b) the WebUI's built-in "Noise schedule: Zero Terminal SNR" (sigma_max 4518.8), v model, same default scheduler;
(c) sd-webui-vpred: ZTSNR + trailing timesteps (:func:`lib_vpred.schedule.trailing_sigmas`);
(d) (c) with class-conditional CFG at scale 7.5, without and with the v-space CFG rescale (phi 0.7,
    :func:`lib_vpred.guidance.rescale_denoised`), combined as the WebUI's ``CFGDenoiser`` does.

Prints a table (brightness spread, dark/bright recovery, CFG tone gain) and writes a PNG grid. ``--quick`` is the CI
smoke run.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for `exact` when imported from elsewhere
import exact

from lib_vpred.guidance import combine_conds, positive_prediction, rescale_denoised

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # clip-anytorch, imported by k_diffusion

#: Repository root; the default output folder is ``<root>/out`` (git-ignored).
ROOT = Path(__file__).resolve().parents[1]

#: Guidance scale and rescale strength of the paper's recommendation (Sec. 3.4 / 5.3: "w = 7.5, phi = 0.7").
CFG_SCALE = 7.5
RESCALE_PHI = 0.7

#: Full run: 256 samples give a brightness-std estimate with ~4% standard error (1/sqrt(2n)).
FULL = {"samples": 256, "steps": (10, 20, 40), "samplers": ("Euler", "DPM++ 2M"), "grid_columns": 12}
QUICK = {"samples": 48, "steps": (10,), "samplers": ("Euler",), "grid_columns": 8}

#: Pixel scale of each 32x32 image in the grid.
GRID_ZOOM = 2


@dataclasses.dataclass(frozen=True)
class Config:
    """One sampling configuration: which alpha-bar table, parameterization, scheduler and guidance."""

    key: str
    label: str
    ztsnr: bool
    scheduler: str  # "default" = the WebUI's Automatic choice for the sampler
    cfg_scale: float = 1.0
    phi: float = 0.0

    @property
    def conditional(self) -> bool:
        return self.cfg_scale != 1.0

    def scheduler_for(self, sampler: str) -> str:
        return exact.DEFAULT_SCHEDULER[sampler] if self.scheduler == "default" else self.scheduler


CONFIGS: tuple[Config, ...] = (
    Config("a", "(a) stock SD, default scheduler", ztsnr=False, scheduler="default"),
    Config("b", "(b) WebUI built-in ZTSNR, default sched.", ztsnr=True, scheduler="default"),
    Config("c", "(c) vpred: ZTSNR + trailing", ztsnr=True, scheduler="trailing"),
    Config("d0", f"(d) (c) + CFG {CFG_SCALE:g}, no rescale", ztsnr=True, scheduler="trailing", cfg_scale=CFG_SCALE),
    Config(
        "d",
        f"(d) (c) + CFG {CFG_SCALE:g} + rescale {RESCALE_PHI:g}",
        ztsnr=True,
        scheduler="trailing",
        cfg_scale=CFG_SCALE,
        phi=RESCALE_PHI,
    ),
)


class CFGDenoiser:
    """The WebUI's ``CFGDenoiser`` reduced to one cond per image, in denoised (x0) space, plus the v-space rescale.

    Batch layout as in ``sd_samplers_cfg_denoiser.py``: all cond rows, then one uncond row per image; combined with
    :func:`lib_vpred.guidance.combine_conds` (``D_u + w (D_c - D_u)``), then
    ``rescale_denoised(x, sigma, D_pos, D_cfg, phi)``.
    """

    def __init__(self, inner, classes: torch.Tensor, scale: float, phi: float) -> None:
        self.inner, self.classes, self.scale, self.phi = inner, classes, scale, phi
        self.conds_list = [[(i, 1.0)] for i in range(classes.shape[0])]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        b = x.shape[0]
        cond_in = torch.cat([self.classes, torch.full_like(self.classes, -1)])
        x_out = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=cond_in)
        uncond = x_out[b:]
        cfg = combine_conds(x_out, self.conds_list, uncond, self.scale)
        if self.phi == 0:
            return cfg
        return rescale_denoised(x, sigma, positive_prediction(x_out, self.conds_list, uncond), cfg, self.phi)


@dataclasses.dataclass
class Metrics:
    """Per-run statistics, all relative to the exact data distribution (1.00 / 100% = perfect)."""

    brightness_std_ratio: float
    dark_recovered: float
    bright_recovered: float
    contrast_ratio: float
    x0_peak: float
    tone_gain: float | None


def measure(
    model: exact.GaussianMixtureImages, x: torch.Tensor, classes: torch.Tensor | None, x0_peak: float
) -> Metrics:
    """Brightness-std ratio, dark/bright recovery, contrast ratio and (conditional runs) the CFG tone gain.

    Contrast ratio = sqrt(mean within-image pixel variance of the samples / the data's exact value): > 1 is the
    over-saturated texture that CFG without rescale is known for, < 1 a washed-out / over-smoothed image. ``x0_peak``
    (measured by the caller) is the largest RMS of the x0 prediction over the sampling steps relative to the data's
    RMS: the "over-exposed" intermediate prediction that CFG rescale exists to tame (paper Sec. 3.4).

    Tone gain = least-squares slope (through 0) of the samples' per-class mean brightness against the data's exact
    per-class mean brightness (-0.45, 0, +0.45): 1 is faithful, > 1 exaggerated (over-exposed), < 1 washed out.
    """
    b = exact.brightness(x)
    dark_data, bright_data = model.tone_fractions()
    tone_gain = None
    if classes is not None:
        target = model.class_brightness()
        got = torch.stack([b[classes == c].mean() for c in range(model.num_classes)])
        tone_gain = float((got * target).sum() / (target * target).sum())
    within = x.to(exact.DTYPE).reshape(x.shape[0], -1).var(dim=1, unbiased=False).mean()
    return Metrics(
        brightness_std_ratio=float(b.std()) / model.brightness_std(),
        dark_recovered=float((b < exact.DARK_BELOW).double().mean()) / dark_data,
        bright_recovered=float((b > exact.BRIGHT_ABOVE).double().mean()) / bright_data,
        contrast_ratio=float((within / model.within_image_variance()).sqrt()),
        x0_peak=x0_peak,
        tone_gain=tone_gain,
    )


def run(settings: dict, seed: int) -> tuple[dict[tuple[str, str, int], Metrics], dict[str, torch.Tensor], dict]:
    """Sample every (sampler, config, steps); returns metrics, grid images (first sampler, middle step count), info."""
    model = exact.GaussianMixtureImages.tones()
    tables = {False: exact.stock_alphas_cumprod(), True: exact.builtin_ztsnr_alphas_cumprod()}
    wraps = {
        False: exact.make_denoiser(model, tables[False], "eps"),
        True: exact.make_denoiser(model, tables[True], "v"),
    }
    n = settings["samples"]
    noise = torch.randn(n, *model.shape, generator=torch.Generator().manual_seed(seed), dtype=exact.DTYPE)
    classes = torch.arange(n) % model.num_classes
    grid_sampler, grid_steps = settings["samplers"][0], settings["steps"][len(settings["steps"]) // 2]
    results: dict[tuple[str, str, int], Metrics] = {}
    grid: dict[str, torch.Tensor] = {"data": model.sample(n, torch.Generator().manual_seed(seed + 1))[0]}
    sigma_info: dict[str, str] = {}
    for sampler in settings["samplers"]:
        for cfg in CONFIGS:
            wrap = wraps[cfg.ztsnr]
            denoiser = CFGDenoiser(wrap, classes, cfg.cfg_scale, cfg.phi) if cfg.conditional else wrap
            for steps in settings["steps"]:
                sigmas = exact.webui_sigmas(cfg.scheduler_for(sampler), wrap, steps)
                peak = [0.0]

                def track(d: dict, peak: list[float] = peak) -> None:
                    peak[0] = max(peak[0], float(d["denoised"].to(exact.DTYPE).pow(2).mean().sqrt()))

                out = exact.run_sampler(
                    sampler, denoiser, noise, sigmas, seed=seed + 2, extra_args={"cond": None}, callback=track
                )
                x0_peak = peak[0] / model.mean_square() ** 0.5
                results[(sampler, cfg.key, steps)] = measure(model, out, classes if cfg.conditional else None, x0_peak)
                if sampler == grid_sampler and steps == grid_steps:
                    grid[cfg.key] = out
                sigma_info.setdefault(
                    f"{cfg.scheduler_for(sampler)}/{'ztsnr' if cfg.ztsnr else 'stock'}/{steps}",
                    ", ".join(f"{float(s):.4g}" for s in sigmas[:3]) + f", ... (last nonzero {float(sigmas[-2]):.3g})",
                )
    info = {"model": model, "grid_sampler": grid_sampler, "grid_steps": grid_steps, "sigmas": sigma_info}
    return results, grid, info


def format_table(results: dict[tuple[str, str, int], Metrics], settings: dict, model) -> str:
    """The printed table: one line per sampler, configuration and step count."""
    dark, bright = model.tone_fractions()
    lines = [
        f"{'sampler':9s} {'configuration':52s} {'steps':>5s} {'bright-std':>10s} {'dark':>6s} {'bright':>6s} "
        f"{'contrast':>8s} {'x0 peak':>7s} {'tone gain':>9s}",
    ]
    for sampler in settings["samplers"]:
        for cfg in CONFIGS:
            for steps in settings["steps"]:
                m = results[(sampler, cfg.key, steps)]
                label = f"{cfg.label} [{cfg.scheduler_for(sampler)}]"
                gain = "-" if m.tone_gain is None else f"{m.tone_gain:.2f}"
                lines.append(
                    f"{sampler:9s} {label:52s} {steps:5d} {m.brightness_std_ratio:10.2f} {m.dark_recovered:6.0%} "
                    f"{m.bright_recovered:6.0%} {m.contrast_ratio:8.2f} {m.x0_peak:7.2f} {gain:>9s}"
                )
        lines.append("")
    lines.append(
        f"bright-std: std of per-image mean brightness / the data's exact {model.brightness_std():.3f} (1.00 = perfect). "
        f"dark / bright: share of samples darker than {exact.DARK_BELOW:+.2f} / brighter than {exact.BRIGHT_ABOVE:+.2f}, "
        f"relative to the data's {dark:.0%} / {bright:.0%} (100% = perfect). contrast: RMS within-image pixel spread / the "
        f"data's (1.00 = perfect, > 1 over-saturated). x0 peak: largest RMS of the x0 prediction during sampling / the "
        "data's RMS (> 1 = over-exposed intermediate prediction). tone gain (CFG rows): slope of per-class "
        f"mean brightness vs the data's ({', '.join(f'{float(v):+.2f}' for v in model.class_brightness())}); "
        "1.00 = faithful, > 1 exaggerated."
    )
    return "\n".join(lines)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] image (C, H, W) -> uint8 (H, W, 3); one channel is shown as grey, more than 3 as the first three."""
    img = ((x.to(torch.float64).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    img = img[:3] if img.shape[0] >= 3 else img[:1].expand(3, -1, -1)
    return img.permute(1, 2, 0).contiguous()


def draw_grid(grid: dict[str, torch.Tensor], labels: dict[str, str], columns: int, path: Path, title: str) -> None:
    """Rows = configurations (data first), columns = the same seeds in every row; labels drawn with Pillow."""
    from PIL import Image, ImageDraw

    keys = list(grid)
    h, w = grid[keys[0]].shape[-2:]
    cell_h, cell_w, pad, label_w, title_h = h * GRID_ZOOM, w * GRID_ZOOM, 4, 420, 28
    width = label_w + columns * (cell_w + pad) + pad
    height = title_h + len(keys) * (cell_h + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 6), title, fill=(0, 0, 0), font=_font(15))
    font = _font(13)
    for row, key in enumerate(keys):
        y = title_h + row * (cell_h + pad)
        for i, line in enumerate(labels[key].split("\n")):
            draw.text((pad, y + 6 + 17 * i), line, fill=(0, 0, 0), font=font)
        for col in range(min(columns, grid[key].shape[0])):
            tile = Image.fromarray(to_uint8(grid[key][col]).numpy()).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (label_w + col * (cell_w + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: fewer samples and steps (< 15 s)")
    parser.add_argument("--samples", type=int, help="images per configuration")
    parser.add_argument("--steps", type=int, nargs="+", help="step counts")
    parser.add_argument("--samplers", nargs="+", choices=["Euler", "Euler a", "DPM++ 2M", "Heun"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "out", help="output folder (created if missing)")
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    for key in ("samples", "steps", "samplers"):
        if getattr(args, key):
            settings[key] = tuple(getattr(args, key)) if key != "samples" else getattr(args, key)
    # Small float64 tensors: one thread is faster than two, and much faster when the cores are shared (OpenMP
    # spin-waiting made a 150k-element op 60x slower with 2 threads on a busy 2-core machine).
    exact.keep_freed_memory()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        results, grid, info = run(settings, args.seed)
    finally:
        torch.set_num_threads(threads)
    model = info["model"]
    print(
        f"sd-webui-vpred dynamic-range demo (ideal-denoiser proxy: exact posterior mean of a known image "
        f"distribution, no network)\n{settings['samples']} samples per row of a {'x'.join(map(str, model.shape))} "
        f"mixture of {model.means.shape[0]} templates (tones {', '.join(f'{t:+.1f}' for t in exact.TONES)}), "
        f"seed {args.seed}; real k-diffusion samplers; CFG {CFG_SCALE:g} in denoised space, rescale in v space.\n"
    )
    print(format_table(results, settings, model))
    print(f"\nschedules at {info['grid_steps']} steps (first sigmas):")
    for key, text in info["sigmas"].items():
        scheduler, table, steps = key.split("/")
        if int(steps) == info["grid_steps"]:
            print(f"  {table:5s} {scheduler:10s} {text}")
    labels = {"data": f"data (exact samples)\nbright-std {1.0:.2f}"}
    sampler, steps = info["grid_sampler"], info["grid_steps"]
    for cfg in CONFIGS:
        m = results[(sampler, cfg.key, steps)]
        extra = "" if m.tone_gain is None else f", tone gain {m.tone_gain:.2f}, x0 peak {m.x0_peak:.2f}"
        labels[cfg.key] = f"{cfg.label}\n[{cfg.scheduler_for(sampler)}] bright-std {m.brightness_std_ratio:.2f}{extra}"
    path = args.out / "demo_grid.png"
    columns = min(settings["grid_columns"], settings["samples"])
    title = f"{sampler}, {steps} steps; columns share a seed (CFG rows: classes night/overcast/day in turn)"
    draw_grid(grid, labels, columns, path, title)
    print(f"\ngrid: {path}")
    print(f"elapsed: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
