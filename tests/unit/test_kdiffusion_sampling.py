"""Real k-diffusion samplers on lib_vpred's ZTSNR + trailing schedule, driving a closed-form v-prediction model.

The "model" is exact: for Gaussian data ``x0 ~ N(mean_image, tau_b^2 * 11^T + tau_p^2 * I)`` (a brightness offset
shared by every pixel of an image, plus per-pixel spread) the posterior mean ``E[x0 | x]`` at noise level sigma is
closed form, and it is turned into the v the UNet would output with the paper's Eq. 11 (written out below, float64).
k-diffusion's own ``CompVisVDenoiser`` wraps it, exactly as A1111 wraps a v-prediction checkpoint. A point mass
(``tau_b = tau_p = 0``) is the special case "every image is this template".

The paper's claim (Sec. 1, 3.1): with the stock schedule (SNR_T > 0, sigma_max = 14.6) samplers start from pure noise
whose per-image mean carries no brightness, while the model learned to read brightness from it, so dark data comes
out too bright. With ZTSNR (sigma_max ~ 4518.8) and trailing spacing the first step is at t = 999 where the model
predicts the data mean, so dark stays dark.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
from k_diffusion import sampling as kds
from k_diffusion.external import CompVisVDenoiser

from lib_vpred import schedule

STEPS = 10
SHAPE = (4, 32, 32)  # one SD latent-like image; d = 4096 values
DARK = -0.9  # every image of the data set is dark on average
TAU_B = 0.2  # per-image brightness spread
TAU_P = 0.2  # per-pixel spread


def ref_v_from_x0(x: torch.Tensor, sigma: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 11 in k-diffusion (VE) coordinates: x = x0 + sigma * eps, v = alpha * eps - s * x0."""
    sig = sigma.double().view(-1, *([1] * (x.ndim - 1)))
    eps = (x - x0) / sig
    return eps / torch.sqrt(1 + sig**2) - x0 * sig / torch.sqrt(1 + sig**2)


class GaussianVModel:
    """Fake CompVis inner model: ``alphas_cumprod`` plus an exact ``apply_model`` for Gaussian data."""

    def __init__(self, alphas_cumprod: torch.Tensor, mean_image: torch.Tensor, tau_b: float, tau_p: float) -> None:
        self.alphas_cumprod = alphas_cumprod
        self.mean_image = mean_image.double()
        self.tau_b, self.tau_p = tau_b, tau_p
        self.current_sigma: torch.Tensor | None = None
        self.ts: list[float] = []

    def posterior_mean(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sig2 = sigma.double().view(-1, 1, 1, 1) ** 2
        r = x.double() - self.mean_image
        d = r[0].numel()
        m = r.mean(dim=(1, 2, 3), keepdim=True)  # component along the all-ones direction (brightness)
        lam_mean = d * self.tau_b**2 + self.tau_p**2  # data variance along the unit all-ones direction
        lam_pix = self.tau_p**2  # data variance along every direction orthogonal to it
        return self.mean_image + lam_mean / (lam_mean + sig2) * m + lam_pix / (lam_pix + sig2) * (r - m)

    def apply_model(self, x_in: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        assert self.current_sigma is not None, "called outside the recording wrapper"
        sigma = self.current_sigma
        self.ts.append(float(t[0]))
        # CompVisVDenoiser feeds x * c_in with c_in = 1 / sqrt(sigma^2 + 1): undo it to get the VE sample.
        x = x_in.double() * torch.sqrt(sigma.double() ** 2 + 1).view(-1, 1, 1, 1)
        v = ref_v_from_x0(x, sigma, self.posterior_mean(x, sigma))
        return v.to(x_in.dtype)


class Recording:
    """What samplers call: records each sigma and tells the fake model the exact sigma of this call."""

    def __init__(self, model: GaussianVModel) -> None:
        self.model = model
        self.denoiser = CompVisVDenoiser(model)
        self.sigmas: list[float] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],)
        assert bool((sigma == sigma[0]).all())
        self.sigmas.append(float(sigma[0]))
        self.model.current_sigma = sigma
        return self.denoiser(x, sigma, **kwargs)


def seeded_noise_sampler(x: torch.Tensor, seed: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(x.shape, generator=g, dtype=x.dtype)


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": kds.sample_euler,
    "heun": kds.sample_heun,
    "dpmpp_2m": kds.sample_dpmpp_2m,
    "euler_ancestral": kds.sample_euler_ancestral,
}


def run(sampler: str, denoiser: Recording, x: torch.Tensor, sigmas: torch.Tensor, seed: int = 0, callback=None):
    kwargs = {"extra_args": {"cond": None}, "disable": True, "callback": callback}
    if sampler == "euler_ancestral":
        kwargs["noise_sampler"] = seeded_noise_sampler(x, seed)
    return SAMPLERS[sampler](denoiser, x, sigmas, **kwargs)


def expected_visits(sampler: str, sigmas: list[float]) -> list[float]:
    """The sigmas each k-diffusion sampler evaluates the model at, from its published algorithm."""
    if sampler == "heun":
        # Heun: model at sigma_i, then at sigma_{i+1} unless that is the final 0 (Euler step).
        out = []
        for s, s_next in itertools.pairwise(sigmas):
            out.append(s)
            if s_next != 0:
                out.append(s_next)
        return out
    return sigmas[:-1]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These tensors are small: one intra-op thread avoids oversubscription on busy 2-core CI runners (10x here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ztsnr_table() -> torch.Tensor:
    return schedule.ztsnr_alphas_cumprod(schedule.scaled_linear_alphas_cumprod())


@pytest.fixture(scope="module")
def stock_table() -> torch.Tensor:
    return schedule.scaled_linear_alphas_cumprod().float()


def start_noise(batch: int, seed: int) -> torch.Tensor:
    return torch.randn((batch, *SHAPE), generator=torch.Generator().manual_seed(seed))


# --- what the samplers visit, and where they end ------------------------------------------------------------------


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_sampler_visits_trailing_sigmas_and_lands_on_point_mass(ztsnr_table: torch.Tensor, sampler: str):
    template = torch.randn((1, *SHAPE), generator=torch.Generator().manual_seed(1)) * 0.5
    model = GaussianVModel(ztsnr_table, template, tau_b=0.0, tau_p=0.0)  # every image is `template`
    denoiser = Recording(model)
    sigmas = schedule.trailing_sigmas(denoiser.denoiser.sigmas, STEPS)
    steps_seen: list[dict] = []
    x = start_noise(2, seed=2) * sigmas[0]
    out = run(sampler, denoiser, x, sigmas, callback=steps_seen.append)

    assert denoiser.sigmas == expected_visits(sampler, sigmas.tolist())
    assert denoiser.sigmas[0] == pytest.approx(4518.7637, abs=1e-3)  # first call at the ZTSNR sigma_max
    assert 0.0 not in denoiser.sigmas  # the model is never asked for sigma = 0...
    assert sigmas[-1].item() == 0.0  # ...the last step goes to it
    # The model sees the trailing integer timesteps 999, 899, ..., 99 on its own t axis.
    t_expected = [float(t) for t in schedule.spaced_timesteps(STEPS, "trailing")]
    t_seen = sorted({round(t, 2) for t in model.ts}, reverse=True)
    assert t_seen == pytest.approx(t_expected, abs=1e-2)
    # The sample returned at sigma 0 is the data point.
    torch.testing.assert_close(out, template.expand_as(out), rtol=0, atol=1e-4)
    assert len(steps_seen) == STEPS
    torch.testing.assert_close(steps_seen[0]["denoised"], template.expand_as(out), rtol=0, atol=1e-4)


def test_k_diffusion_default_schedule_on_stock_table_starts_at_14_6(stock_table: torch.Tensor):
    # The counterpart used below: k-diffusion's get_sigmas (linspace in t) on the stock SD table.
    denoiser = CompVisVDenoiser(GaussianVModel(stock_table, torch.zeros(1, *SHAPE), 0.0, 0.0))
    sigmas = denoiser.get_sigmas(STEPS)
    assert sigmas[0].item() == pytest.approx(14.6146, abs=1e-3)
    assert sigmas[-1].item() == 0.0


# --- brightness of a dark data set: ZTSNR + trailing vs the stock schedule ------------------------------------------


def euler_mean_factor(sigmas: list[float], d: int, tau_b: float, tau_p: float) -> float:
    """Exact Euler recursion for the brightness coordinate m = mean(x - mean_image) under the Gaussian model.

    D_m = k(sigma) m with k = lam / (lam + sigma^2), lam = d tau_b^2 + tau_p^2, and an Euler step
    x' = x + (sigma' - sigma)(x - D)/sigma gives m' = m (1 + (sigma' - sigma)(1 - k)/sigma). Float64, independent of
    lib_vpred and of k-diffusion.
    """
    lam = d * tau_b**2 + tau_p**2
    factor = 1.0
    for s, s_next in itertools.pairwise(sigmas):
        factor *= 1.0 + (s_next - s) * (1.0 - lam / (lam + s * s)) / s
    return factor


BATCH = 32
D = math.prod(SHAPE)


def dark_case(table: torch.Tensor, which: str) -> tuple[Recording, torch.Tensor]:
    denoiser = Recording(GaussianVModel(table, torch.full((1, *SHAPE), DARK), TAU_B, TAU_P))
    if which == "ztsnr":
        sigmas = schedule.trailing_sigmas(denoiser.denoiser.sigmas, STEPS)
    else:
        sigmas = denoiser.denoiser.get_sigmas(STEPS)  # k-diffusion's default, as A1111's "Automatic"/"Uniform"
    return denoiser, sigmas


def test_euler_brightness_matches_closed_form_and_ztsnr_stays_dark(ztsnr_table, stock_table):
    noise = start_noise(BATCH, seed=3)  # the same seeds for both schedules
    results = {}
    for which, table in (("ztsnr", ztsnr_table), ("stock", stock_table)):
        denoiser, sigmas = dark_case(table, which)
        x = noise * sigmas[0]
        out = run("euler", denoiser, x, sigmas)
        sig = sigmas.double().tolist()
        factor = euler_mean_factor(sig, D, TAU_B, TAU_P)
        m_start = x.double().mean(dim=(1, 2, 3)) - DARK
        predicted = DARK + factor * m_start
        # Per image, the sampler's output brightness equals the closed-form Euler recursion.
        torch.testing.assert_close(out.double().mean(dim=(1, 2, 3)), predicted, rtol=0, atol=2e-3)
        # Expected bias when the start has zero brightness (pure noise), and the spread the noise adds.
        bias = factor * (0.0 - DARK)
        spread = abs(factor) * sig[0] / math.sqrt(D)
        results[which] = (out.mean().item(), bias, spread)

    z_mean, z_bias, z_spread = results["ztsnr"]
    s_mean, s_bias, s_spread = results["stock"]
    # The paper's claim, quantified: the stock schedule pulls a dark data set a long way towards 0 ...
    assert s_bias > 0.3
    assert s_bias > 20 * z_bias
    assert s_mean - DARK > s_bias - 5 * s_spread / math.sqrt(BATCH)
    # ... while ZTSNR + trailing keeps it dark: the batch mean is the data mean up to sampling noise.
    assert abs(z_mean - DARK) < z_bias + 5 * z_spread / math.sqrt(BATCH)
    assert s_mean - z_mean > 0.5 * s_bias


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler_ancestral"])
def test_other_samplers_keep_dark_data_dark_only_with_ztsnr(ztsnr_table, stock_table, sampler: str):
    noise = start_noise(BATCH, seed=4)
    means = {}
    for which, table in (("ztsnr", ztsnr_table), ("stock", stock_table)):
        denoiser, sigmas = dark_case(table, which)
        out = run(sampler, denoiser, noise * sigmas[0], sigmas, seed=5)
        assert bool(torch.isfinite(out).all())
        means[which] = out.mean().item()
    stock_bias = euler_mean_factor(dark_case(stock_table, "stock")[1].double().tolist(), D, TAU_B, TAU_P) * -DARK
    # Sampling noise of the batch mean: per-image brightness spread TAU_B over BATCH images (5 sigma), plus slack
    # for the solver's discretisation.
    tolerance = 5 * TAU_B / math.sqrt(BATCH) + 0.05
    assert abs(means["ztsnr"] - DARK) < tolerance
    assert means["stock"] - DARK > 0.5 * stock_bias > tolerance


def heun_mean_factor(sigmas: list[float], d: int, tau_b: float, tau_p: float) -> float:
    """k-diffusion's Heun step (trapezoid; Euler into sigma = 0) on the brightness coordinate, closed form."""
    lam = d * tau_b**2 + tau_p**2

    def slope(m: float, s: float) -> float:  # (x - D) / sigma on the brightness coordinate
        return (1.0 - lam / (lam + s * s)) * m / s

    factor = 1.0
    for s, s_next in itertools.pairwise(sigmas):
        d1 = slope(1.0, s)
        if s_next == 0:
            factor *= 1.0 + d1 * (s_next - s)
        else:
            d2 = slope(1.0 + d1 * (s_next - s), s_next)
            factor *= 1.0 + 0.5 * (d1 + d2) * (s_next - s)
    return factor


def test_heun_overshoots_brightness_on_the_ztsnr_first_step(ztsnr_table):
    """A property of Heun with ZTSNR + trailing, not of lib_vpred, pinned here so it stays visible.

    The first step goes from sigma 4518.8 to 18.1 (t 999 -> 899). Heun's trapezoid takes the slope at 18.1, where
    the brightness direction is already partly "explained" by the data (k = lam / (lam + sigma^2) ~ 0.33), and
    averages it with the slope at 4518.8: it keeps ~10% of the initial 4518-scale noise in the brightness direction
    instead of ~0.3%. With the exact model, 10 steps give a brightness spread ~35x the data's. Euler, DPM++ 2M,
    DPM2, LMS and the ancestral/SDE samplers do not do this.
    """
    denoiser, sigmas = dark_case(ztsnr_table, "ztsnr")
    x = start_noise(BATCH, seed=4) * sigmas[0]
    out = run("heun", denoiser, x, sigmas)
    sig = sigmas.double().tolist()
    heun = heun_mean_factor(sig, D, TAU_B, TAU_P)
    predicted = DARK + heun * (x.double().mean(dim=(1, 2, 3)) - DARK)
    torch.testing.assert_close(out.double().mean(dim=(1, 2, 3)), predicted, rtol=1e-3, atol=1e-2)
    # the exact probability-flow ODE keeps m / sqrt(var_data + sigma^2 / d) constant along the brightness direction
    var_data = TAU_B**2 + TAU_P**2 / D
    exact = math.sqrt(var_data / (var_data + sig[0] ** 2 / D))
    euler = euler_mean_factor(sig, D, TAU_B, TAU_P)
    assert abs(euler - exact) < 0.5 * exact
    assert heun > 10 * exact
    assert out.double().mean(dim=(1, 2, 3)).std().item() > 10 * TAU_B


def test_euler_ancestral_is_reproducible_with_a_seeded_generator(ztsnr_table):
    outs = []
    for _ in range(2):
        denoiser, sigmas = dark_case(ztsnr_table, "ztsnr")
        outs.append(run("euler_ancestral", denoiser, start_noise(4, seed=6) * sigmas[0], sigmas, seed=7))
        assert denoiser.sigmas == sigmas[:-1].tolist()
    assert torch.equal(outs[0], outs[1])
    denoiser, sigmas = dark_case(ztsnr_table, "ztsnr")
    other = run("euler_ancestral", denoiser, start_noise(4, seed=6) * sigmas[0], sigmas, seed=8)
    assert not torch.equal(outs[0], other)


def test_euler_ancestral_reproduces_the_data_spread(ztsnr_table):
    # An SDE sampler with the exact score samples the noisy marginals; its last step (sigma_last -> 0) returns the
    # posterior mean, whose spread along a direction of data variance lam is lam / sqrt(lam + sigma_last^2).
    # Brightness: lam ~ TAU_B^2 >> sigma_last^2 / d, so ~TAU_B; pixels: TAU_P^2 / sqrt(TAU_P^2 + sigma_last^2).
    # Loose bounds: 10 steps.
    denoiser, sigmas = dark_case(ztsnr_table, "ztsnr")
    out = run("euler_ancestral", denoiser, start_noise(BATCH, seed=9) * sigmas[0], sigmas, seed=10).double()
    sigma_last = sigmas[-2].item()
    per_image_mean = out.mean(dim=(1, 2, 3))
    pixel_std = (out - per_image_mean.view(-1, 1, 1, 1)).flatten(1).std(dim=1)
    expected_pixel_std = TAU_P**2 / math.sqrt(TAU_P**2 + sigma_last**2)
    assert abs(per_image_mean.mean().item() - DARK) < 5 * TAU_B / math.sqrt(BATCH)
    assert 0.5 * TAU_B < per_image_mean.std().item() < 2 * TAU_B
    assert bool(((pixel_std > 0.8 * expected_pixel_std) & (pixel_std < 1.2 * expected_pixel_std)).all())


def test_euler_first_step_removes_heuns_ztsnr_overshoot(ztsnr_table):
    """lib_vpred.sampling.with_euler_first_step around the real k-diffusion Heun: Euler from sigma 4518.8, then Heun.

    Expected values: the closed-form Euler factor for the first step times the closed-form Heun factor for the rest
    (``euler_mean_factor`` / ``heun_mean_factor`` above, written independently of lib_vpred and k-diffusion).
    """
    import k_diffusion.sampling as kds

    from lib_vpred.sampling import with_euler_first_step

    denoiser, sigmas = dark_case(ztsnr_table, "ztsnr")
    x = start_noise(BATCH, seed=4) * sigmas[0]
    out = with_euler_first_step(kds.sample_heun)(denoiser, x, sigmas, extra_args={"cond": None}, disable=True)
    sig = sigmas.double().tolist()
    lam = D * TAU_B**2 + TAU_P**2  # brightness-direction data variance, as in heun_mean_factor
    first = 1.0 + (1.0 - lam / (lam + sig[0] ** 2)) / sig[0] * (sig[1] - sig[0])  # one Euler step sigma_0 -> sigma_1
    predicted_factor = first * heun_mean_factor(sig[1:], D, TAU_B, TAU_P)
    predicted = DARK + predicted_factor * (x.double().mean(dim=(1, 2, 3)) - DARK)
    torch.testing.assert_close(out.double().mean(dim=(1, 2, 3)), predicted, rtol=1e-3, atol=1e-2)
    # and the overshoot is gone: the brightness spread is back near the data's, far below plain Heun's
    plain = kds.sample_heun(denoiser, x, sigmas, extra_args={"cond": None}, disable=True)
    fixed_spread = out.double().mean(dim=(1, 2, 3)).std().item()
    assert fixed_spread < 3 * TAU_B
    assert plain.double().mean(dim=(1, 2, 3)).std().item() > 5 * fixed_spread


def test_euler_first_step_leaves_other_schedules_alone(stock_table):
    import k_diffusion.sampling as kds

    from lib_vpred.sampling import with_euler_first_step

    denoiser, sigmas = dark_case(stock_table, "stock")
    x = start_noise(BATCH, seed=4) * sigmas[0]
    assert torch.equal(
        with_euler_first_step(kds.sample_heun)(denoiser, x, sigmas, extra_args={"cond": None}, disable=True),
        kds.sample_heun(denoiser, x, sigmas, extra_args={"cond": None}, disable=True),
    )
