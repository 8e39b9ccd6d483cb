"""bench/exact.py: the closed-form denoisers are exact, the CompVis wrappers reproduce them, and the exact variance
propagation matches real k-diffusion sampling. Also a smoke run of ``bench/demo.py --quick``.

References are independent of the code under test: 2-D quadrature of the posterior, k-diffusion's own samplers and
``BrownianTreeNoiseSampler``, and the [computed] schedule table of shared/design/peers.md section 10.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import k_diffusion.sampling as ks
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import exact  # noqa: E402

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small float64 tensors: one thread is much faster on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tables() -> dict[str, torch.Tensor]:
    return {"stock": exact.stock_alphas_cumprod(), "ztsnr": exact.builtin_ztsnr_alphas_cumprod()}


# --- Gaussian mixture: exact posterior mean ----------------------------------------------------------------------------


def _tiny_mixture() -> exact.GaussianMixtureImages:
    """Three 2-pixel templates, unequal weights, two classes: small enough for brute-force quadrature."""
    templates = torch.tensor([[-1.0, 0.5], [0.8, 0.9], [0.2, -1.2]], dtype=F64).reshape(3, 1, 1, 2)
    return exact.GaussianMixtureImages(
        templates,
        weights=torch.tensor([0.5, 0.3, 0.2], dtype=F64),
        classes=torch.tensor([0, 1, 1]),
        component_std=0.3,
    )


def _quadrature_posterior_mean(
    model: exact.GaussianMixtureImages, x: torch.Tensor, sigma: float, keep
) -> torch.Tensor:
    """E[x0 | x] by summing x0 * p(x0) * N(x; x0, sigma^2) over a fine grid of x0 (2-D, float64)."""
    g = torch.linspace(-4.5, 4.5, 601, dtype=F64)  # step 0.015 << posterior std >= 0.19: the sum is exact
    x0 = torch.stack(torch.meshgrid(g, g, indexing="ij"), dim=-1).reshape(-1, 2)
    s2 = model.component_std**2
    prior = torch.zeros(x0.shape[0], dtype=F64)
    for k in range(model.means.shape[0]):
        if keep(k):
            prior += model.weights[k] * torch.exp(-((x0 - model.means[k]) ** 2).sum(1) / (2 * s2))
    like = torch.exp(-((x0 - x.reshape(1, 2)) ** 2).sum(1) / (2 * sigma**2))
    w = prior * like
    return (w[:, None] * x0).sum(0) / w.sum()


@pytest.mark.parametrize("sigma", [0.25, 0.7, 2.0])
def test_mixture_posterior_mean_matches_quadrature(sigma: float) -> None:
    model = _tiny_mixture()
    points = torch.tensor([[0.0, 0.0], [-0.7, 0.4], [1.5, -0.5]], dtype=F64)
    for p in points:
        x = p.reshape(1, 1, 1, 2)
        got = model(x, torch.tensor([sigma], dtype=F64)).reshape(2)
        want = _quadrature_posterior_mean(model, p, sigma, keep=lambda k: True)
        torch.testing.assert_close(got, want, atol=2e-6, rtol=0)
        # class 1 only: the mixture restricted to templates 1 and 2
        got_c = model(x, torch.tensor([sigma], dtype=F64), torch.tensor([1])).reshape(2)
        want_c = _quadrature_posterior_mean(model, p, sigma, keep=lambda k: int(model.classes[k]) == 1)
        torch.testing.assert_close(got_c, want_c, atol=2e-6, rtol=0)


def test_mixture_low_sigma_stays_in_the_nearest_template_region() -> None:
    model = exact.GaussianMixtureImages.tones()
    g = torch.Generator().manual_seed(0)
    x0, idx = model.sample(32, g)
    sigma = 0.03
    x = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=F64)
    w = model.posterior_weights(x, torch.full((32,), sigma, dtype=F64))
    assert torch.equal(w.argmax(1), idx)
    assert bool((w.max(1).values > 1 - 1e-9).all())
    d = model(x, torch.full((32,), sigma, dtype=F64))
    assert torch.equal(model.nearest_template(d), idx)
    # one component: D = (s^2 x + sigma^2 mu_k) / (s^2 + sigma^2), i.e. almost x itself
    s2 = model.component_std**2
    want = (s2 * x + sigma**2 * model.templates[idx]) / (s2 + sigma**2)
    torch.testing.assert_close(d, want, atol=1e-12, rtol=0)
    assert float((d - x).abs().max()) < 0.5 * float((x - model.templates[idx]).abs().max())
    # sigma = 0 is allowed and returns x
    torch.testing.assert_close(model(x, torch.zeros(32, dtype=F64)), x, atol=1e-15, rtol=0)


@pytest.mark.parametrize(("sigma", "tol"), [(4518.76, 0.03), (1e6, 2e-4)])
def test_mixture_huge_sigma_returns_the_data_mean(sigma: float, tol: float) -> None:
    model = exact.GaussianMixtureImages.tones()
    z = torch.randn(16, *model.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    d = model(sigma * z, torch.full((16,), sigma, dtype=F64))
    assert bool(torch.isfinite(d).all())
    data_mean = (model.weights[:, None] * model.means).sum(0).reshape(model.shape)
    assert float((d - data_mean).abs().max()) < tol
    # conditional: the class mean (the paper's "v_T = x0": the prompt-conditional mean from pure noise)
    cond = torch.arange(16) % 3
    dc = model(sigma * z, torch.full((16,), sigma, dtype=F64), cond)
    for c in range(3):
        sel = model.classes == c
        class_mean = (model.weights[sel, None] * model.means[sel]).sum(0) / model.weights[sel].sum()
        assert float((dc[cond == c] - class_mean.reshape(model.shape)).abs().max()) < tol


def test_brightness_statistics_are_exact() -> None:
    model = exact.GaussianMixtureImages.tones(3, 8)
    x0, _ = model.sample(20000, torch.Generator().manual_seed(2))
    b = exact.brightness(x0)
    assert float(b.std()) == pytest.approx(model.brightness_std(), rel=0.02)
    dark, bright = model.tone_fractions()
    assert float((b < exact.DARK_BELOW).double().mean()) == pytest.approx(dark, abs=0.015)
    assert float((b > exact.BRIGHT_ABOVE).double().mean()) == pytest.approx(bright, abs=0.015)
    within = x0.reshape(x0.shape[0], -1).var(dim=1, unbiased=False).mean()
    assert float(within) == pytest.approx(model.within_image_variance(), rel=0.01)
    assert float(x0.pow(2).mean()) == pytest.approx(model.mean_square(), rel=0.01)


# --- CompVis wrappers ----------------------------------------------------------------------------------------------


def _sigmas_to_check(wrap) -> list[float]:
    table = [float(wrap.sigmas[i]) for i in (0, 1, 400, 998, 999)]
    return [*table, 0.05, 0.7, 3.3, 14.6, 123.4, 2000.0]


@pytest.mark.parametrize("which", ["mixture", "gaussian"])
def test_v_wrapper_through_compvis_v_denoiser_reproduces_the_denoiser(which: str, tables) -> None:
    model = exact.GaussianMixtureImages.tones() if which == "mixture" else exact.GaussianPowerSpectrum(4, 16)
    wrap = exact.make_denoiser(model, tables["ztsnr"], "v")
    assert float(wrap.sigmas[-1]) == pytest.approx(4518.76, abs=0.01)
    g = torch.Generator().manual_seed(3)
    for sigma in _sigmas_to_check(wrap):
        x = torch.randn(4, *model.shape, generator=g, dtype=F64) * math.sqrt(1 + sigma**2)
        s = torch.full((4,), sigma, dtype=F64)
        got = wrap(x, s, cond=None)
        want = model(x, s)
        torch.testing.assert_close(got, want, atol=1e-11, rtol=1e-11, msg=f"sigma={sigma}")


def test_eps_wrapper_through_compvis_denoiser_reproduces_the_denoiser(tables) -> None:
    model = exact.GaussianMixtureImages.tones()
    wrap = exact.make_denoiser(model, tables["stock"], "eps")
    g = torch.Generator().manual_seed(4)
    for sigma in _sigmas_to_check(wrap)[:-2]:  # within the stock table (sigma_max 14.61)
        x = torch.randn(4, *model.shape, generator=g, dtype=F64) * math.sqrt(1 + sigma**2)
        s = torch.full((4,), sigma, dtype=F64)
        torch.testing.assert_close(wrap(x, s, cond=None), model(x, s), atol=1e-11, rtol=1e-11, msg=f"sigma={sigma}")


def test_v_wrapper_returns_paper_eq_11(tables) -> None:
    """apply_model gives v = sqrt(abar) eps - sqrt(1 - abar) x0 for a sample built from known x0 and eps."""
    model = exact.GaussianPowerSpectrum(4, 16)
    vm = exact.VPredictionModel(model, tables["ztsnr"])
    t = torch.tensor([999.0, 500.0, 3.0], dtype=F64)
    sigma = vm.t_to_sigma(t)
    abar = 1 / (1 + sigma**2)
    x_vp = torch.randn(3, *model.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    x0 = model(x_vp * (1 + sigma**2).sqrt()[:, None, None, None], sigma)
    eps = (x_vp - abar.sqrt()[:, None, None, None] * x0) / (1 - abar).sqrt()[:, None, None, None]
    want = abar.sqrt()[:, None, None, None] * eps - (1 - abar).sqrt()[:, None, None, None] * x0
    torch.testing.assert_close(vm.apply_model(x_vp, t, None), want, atol=1e-9, rtol=1e-9)
    # at t = T (ZTSNR), v is (minus) the predicted data mean: the paper's v_T = -x0 up to sqrt(abar_T) ~ 2.2e-4
    torch.testing.assert_close(vm.apply_model(x_vp, t, None)[0], -x0[0], atol=1e-3, rtol=0)


# --- WebUI schedulers, re-derived: checked against the [computed] table of peers.md section 10 ------------------------


@pytest.mark.parametrize(
    ("scheduler", "first"),
    [
        ("karras", (4518.8, 3319.9, 2404.8)),
        ("exponential", (4518.8, 2409.1, 1284.4)),
        ("beta", (4518.8, 4457.0, 4324.1)),
        ("simple", (4518.8, 40.4, 18.1)),
        ("uniform", (4518.8, 38.2, 17.1)),
        ("sgm_uniform", (4518.8, 40.4, 18.2)),
        ("kl_optimal", (4518.8, 12.9, 6.4)),
    ],
)
def test_webui_schedulers_match_the_design_table(scheduler: str, first: tuple[float, ...], tables) -> None:
    wrap = exact.make_denoiser(exact.GaussianPowerSpectrum(1, 4), tables["ztsnr"], "v")
    sig = exact.webui_sigmas(scheduler, wrap, 20)
    assert len(sig) == 21
    for got, want in zip(sig[:3].tolist(), first, strict=True):
        assert got == pytest.approx(want, rel=2e-3, abs=0.06)


def test_simple_scheduler_is_trailing_and_ddim_timesteps(tables) -> None:
    wrap = exact.make_denoiser(exact.GaussianPowerSpectrum(1, 4), tables["ztsnr"], "v")
    for steps in (10, 20, 25, 50):  # divisors of 1000: Simple is exactly trailing
        torch.testing.assert_close(
            exact.webui_sigmas("simple", wrap, steps), exact.webui_sigmas("trailing", wrap, steps)
        )
    # otherwise Simple floors the offset where trailing rounds: 30 steps differ by one timestep at some steps
    simple, trailing = exact.webui_sigmas("simple", wrap, 30), exact.webui_sigmas("trailing", wrap, 30)
    t_simple, t_trailing = wrap.sigma_to_t(simple[:-1]).round(), wrap.sigma_to_t(trailing[:-1]).round()
    assert bool(((t_simple - t_trailing).abs() <= 1).all())
    assert not torch.equal(t_simple, t_trailing)
    assert exact.webui_ddim_timesteps(20).tolist() == list(range(1, 1000, 50))
    assert len(exact.webui_ddim_timesteps(30)) == 31  # 1000 // 30 = 33 -> 31 entries, as the WebUI
    assert exact.trailing_ddim_timesteps(20).tolist() == [0, *range(49, 1000, 50)]


# --- exact variance propagation vs real k-diffusion sampling ----------------------------------------------------------


def _gain_squared(out: torch.Tensor, x_start: torch.Tensor) -> torch.Tensor:
    return torch.fft.fft2(out, norm="ortho").abs() ** 2 / torch.fft.fft2(x_start, norm="ortho").abs() ** 2


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DPM++ 2M"])
@pytest.mark.parametrize(("table", "scheduler"), [("ztsnr", "trailing"), ("ztsnr", "karras"), ("stock", "uniform")])
def test_exact_variance_matches_deterministic_kdiffusion_per_sample(sampler, table, scheduler, tables) -> None:
    """Deterministic samplers are linear per frequency: every sample's DFT gain equals the propagated one."""
    model = exact.GaussianPowerSpectrum(4, 16)
    wrap = exact.make_denoiser(model, tables[table], "v" if table == "ztsnr" else "eps")
    sig = exact.webui_sigmas(scheduler, wrap, 10)
    noise = torch.randn(2, *model.shape, generator=torch.Generator().manual_seed(6), dtype=F64)
    out = exact.run_sampler(sampler, wrap, noise, sig, extra_args={"cond": None})
    want = exact.exact_generated_variance(sampler, sig, model.power) / float(sig[0]) ** 2
    torch.testing.assert_close(_gain_squared(out, noise * sig[0]), want.expand(2, *model.shape), rtol=1e-6, atol=0)


@pytest.mark.parametrize("table", ["stock", "ztsnr"])
def test_exact_variance_matches_webui_ddim_loop(table: str, tables) -> None:
    model = exact.GaussianPowerSpectrum(4, 16)
    wrap = exact.make_denoiser(model, tables[table], "v")
    for ts in (exact.webui_ddim_timesteps(10), exact.trailing_ddim_timesteps(10)):
        plan = exact.ddim_plan(tables[table], ts)
        noise = torch.randn(2, *model.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
        out = exact.sample_ddim(wrap, noise, ts, tables[table], {"cond": None})
        want = exact.exact_generated_variance(
            "DDIM", plan.sigmas, model.power, start_variance=plan.start_std**2, output_scale=plan.output_scale
        )
        torch.testing.assert_close(_gain_squared(out, noise), want.expand(2, *model.shape), rtol=1e-6, atol=0)


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ SDE"])
@pytest.mark.parametrize("scheduler", ["trailing", "karras"])
def test_exact_variance_matches_stochastic_kdiffusion_statistically(sampler: str, scheduler: str, tables) -> None:
    """Sampled per-band variance agrees with the exact expectation within 5 standard errors (fixed seeds)."""
    model = exact.GaussianPowerSpectrum(4, 16)
    wrap = exact.make_denoiser(model, tables["ztsnr"], "v")
    sig = exact.webui_sigmas(scheduler, wrap, 8)
    n = 256
    noise = torch.randn(n, *model.shape, generator=torch.Generator().manual_seed(8), dtype=F64)
    out = exact.run_sampler(sampler, wrap, noise, sig, seed=9, extra_args={"cond": None})
    got = model.band_ratios(model.empirical_variance(out))
    want = model.band_ratios(exact.exact_generated_variance(sampler, sig, model.power))
    for band, mask in model.band_masks().items():
        modes = int(mask.sum())
        n_eff = n * (modes if band == "dc" else modes / 2)  # DFT modes come in conjugate pairs, except DC
        tol = 5 * math.sqrt(2 / n_eff)
        assert got[band] / want[band] == pytest.approx(1.0, abs=tol), (band, got[band], want[band])


def test_brownian_noise_sampler_has_the_brownian_tree_correlations() -> None:
    """Overlapping DPM++ SDE queries (sigma -> sigma_s, sigma -> sigma') correlate like k-diffusion's tree."""
    x = torch.zeros(8192, dtype=F64)
    sigma, s_mid, s_next = 20.0, 20.0 * 0.4, 20.0 * 0.16
    want = math.sqrt((sigma - s_mid) / (sigma - s_next))
    for sampler in (
        ks.BrownianTreeNoiseSampler(x, 0.03, 4518.8, seed=10),
        exact.BrownianNoiseSampler(x, torch.Generator().manual_seed(10)),
    ):
        a = sampler(torch.tensor(sigma, dtype=F64), torch.tensor(s_mid, dtype=F64))
        b = sampler(torch.tensor(sigma, dtype=F64), torch.tensor(s_next, dtype=F64))
        c = sampler(torch.tensor(s_next, dtype=F64), torch.tensor(1.0, dtype=F64))  # disjoint: independent
        assert float(a.var()) == pytest.approx(1.0, abs=0.05)
        assert float(b.var()) == pytest.approx(1.0, abs=0.05)
        assert float((a * b).mean()) == pytest.approx(want, abs=0.04)
        assert float((b * c).mean()) == pytest.approx(0.0, abs=0.04)


# --- demo smoke run ---------------------------------------------------------------------------------------------------


def test_demo_quick_runs_and_prints_its_table(tmp_path: Path, capsys) -> None:
    import demo

    assert demo.main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "bright-std" in out
    assert "ideal-denoiser proxy" in out
    for cfg in demo.CONFIGS:
        assert cfg.label in out
    rows = [line for line in out.splitlines() if line.startswith("Euler ")]
    assert len(rows) == len(demo.CONFIGS) * len(demo.QUICK["steps"])
    for line in rows:  # ... bright-std dark bright contrast x0-peak tone-gain
        assert 0.0 < float(line.split()[-6]) < 3.0
    grid = tmp_path / "demo_grid.png"
    assert grid.is_file()
    assert str(grid) in out
