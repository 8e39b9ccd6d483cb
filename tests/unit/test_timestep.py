"""lib_vpred.timestep: timestep lists for the WebUI's loops, and the v-form DDIM / PLMS / UniPC loops.

Independent references: diffusers ``DDIMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True,
timestep_spacing="trailing")`` stepping the same model function; a float64 loop written here; the eps-route formula
the WebUI uses (``x0 = (x - sqrt(1 - abar) eps) / sqrt(abar)``) to show what it loses at abar ~ 0.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from lib_vpred import schedule, timestep

KINDS = timestep.KINDS
SD = schedule.scaled_linear_alphas_cumprod()  # float64
ZTSNR = schedule.ztsnr_alphas_cumprod(SD, dtype=torch.float64)  # clamped: abar_T = 4.9e-8


def v_model(x: torch.Tensor, t: int | float) -> torch.Tensor:
    """An analytic, x- and t-dependent stand-in for a v-prediction UNet."""
    tt = float(t) / 1000.0
    return torch.tanh(0.7 * x) * (1.0 - 0.4 * tt) + 0.3 * tt - 0.2 * x.flip(-1) * tt


def pair(f):
    def model(x, t):
        v = f(x, t)
        return v, v

    return model


@pytest.fixture
def x_T() -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


# --- lists ------------------------------------------------------------------------------------------------------------


def test_ddim_list_is_zero_then_trailing():
    ts = timestep.trailing_timesteps(20, timestep.DDIM).tolist()
    assert ts == [0, *list(range(49, 1000, 50))]
    assert timestep.trailing_timesteps(10, timestep.PLMS).tolist() == [0, 110, 221, 332, 443, 555, 666, 777, 888, 999]
    assert timestep.trailing_timesteps(4, timestep.UNIPC).tolist() == [249, 499, 749, 999]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("steps", [2, 3, 7, 10, 20, 30, 37, 50, 150])
def test_every_list_starts_at_999_and_takes_exactly_steps_calls(kind, steps):
    ts = timestep.trailing_timesteps(steps, kind)
    assert ts[-1].item() == 999
    assert torch.all(ts[1:] > ts[:-1])
    assert timestep.model_calls(kind, len(ts)) == steps


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("steps", [4, 10, 20, 30, 37])
def test_img2img_noise_level_is_the_first_call_and_calls_are_t_enc_plus_one(kind, steps):
    grid = timestep.trailing_timesteps(steps, kind)
    webui_list = timestep.img2img_get_timesteps(grid, kind)
    for t_enc in range(0 if kind != timestep.PLMS else 1, steps):
        sched = timestep.img2img_schedule(grid, kind, t_enc)
        noise_level = webui_list[t_enc].item()  # sample_img2img noises at timesteps[t_enc]
        assert sched[-1].item() == noise_level  # the loop's first call (DDIM/PLMS: last entry; UniPC: t_start)
        assert timestep.model_calls(kind, len(sched)) == t_enc + 1
        assert sched[0].item() == grid[0].item()  # ends where txt2img ends
    # full strength (t_enc = int(0.999 * steps) = steps - 1) is txt2img: starts at 999 with `steps` calls
    assert timestep.img2img_schedule(grid, kind, steps - 1).tolist() == grid.tolist()


def test_img2img_strength_maps_near_s_times_1000():
    grid = timestep.trailing_timesteps(20, timestep.DDIM)
    for s in (0.25, 0.5, 0.75):
        t_enc = int(s * 20)
        start = timestep.img2img_schedule(grid, timestep.DDIM, t_enc)[-1].item()
        assert abs(start - 1000 * s) <= 1000 / 20


def test_kind_of():
    assert timestep.kind_of("DDIM CFG++") == timestep.DDIM_CFGPP
    assert timestep.kind_of(timestep.ddim_sample_v) is None
    assert timestep.kind_of("plms") == timestep.PLMS


# --- DDIM against diffusers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [10, 20, 50])
def test_ddim_v_matches_diffusers_ddim_ztsnr_trailing(x_T, steps):
    sched = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    sched.set_timesteps(steps)
    abar = sched.alphas_cumprod.to(torch.float64)
    assert abar[-1].item() == 0.0  # diffusers keeps alpha-bar_T exactly 0: the eps route would divide by 0
    x = x_T.clone()
    for t in sched.timesteps:
        x = sched.step(v_model(x, int(t)), int(t), x, eta=0.0).prev_sample
    ours = timestep.ddim_sample_v(pair(v_model), x_T.clone(), timestep.trailing_timesteps(steps, "ddim"), abar)
    assert ours.isfinite().all()
    torch.testing.assert_close(ours, x, rtol=1e-6, atol=1e-6)


# --- precision at alpha-bar ~ 0 ---------------------------------------------------------------------------------------


def ddim_eps_route(f, x, timesteps, abar):
    """The WebUI's DDIM (sd_samplers_timesteps_impl.ddim, eta 0) fed by its v -> eps wrapper, in x's dtype."""
    a_tab = abar.to(x.dtype)
    ts = timesteps.tolist()
    for index in range(len(ts) - 1, 0, -1):
        t, tp = ts[index], ts[index - 1]
        a, ap = a_tab[t], a_tab[tp]
        eps = a.sqrt() * f(x, t) + (1 - a).sqrt() * x
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = ap.sqrt() * x0 + (1 - ap).sqrt() * eps
    return x


def first_x0_error(x_T, dtype, route):
    a = ZTSNR[999].item()
    x = x_T.to(dtype)
    v = v_model(x, 999)
    ref, _ = timestep.x0_eps_from_v(x_T, a, v_model(x_T, 999))
    if route == "v":
        x0, _ = timestep.x0_eps_from_v(x, a, v)
    else:
        at = torch.tensor(a, dtype=dtype)
        eps = at.sqrt() * v + (1 - at).sqrt() * x
        x0 = (x - (1 - at).sqrt() * eps) / at.sqrt()
    return (x0.double() - ref).abs().max().item()


def test_x0_at_t999_v_route_is_exact_eps_route_is_not(x_T):
    v32 = first_x0_error(x_T, torch.float32, "v")
    eps32 = first_x0_error(x_T, torch.float32, "eps")
    v16 = first_x0_error(x_T, torch.float16, "v")
    eps16 = first_x0_error(x_T, torch.float16, "eps")
    print(
        f"x0 at t=999 (abar 4.9e-8) max abs error vs float64: v fp32 {v32:.2e}, eps fp32 {eps32:.2e}, "
        f"v fp16 {v16:.2e}, eps fp16 {eps16:.2e}"
    )
    assert v32 < 1e-6
    assert eps32 > 100 * v32  # the eps route keeps only ~3-4 digits at abar_T
    assert v16 < 5e-3
    assert not (eps16 < 0.1)  # fp16 eps route: garbage or inf


def test_ddim_full_run_v_route_vs_eps_route_against_float64(x_T):
    ts = timestep.trailing_timesteps(20, timestep.DDIM)
    ref = timestep.ddim_sample_v(pair(v_model), x_T.clone(), ts, ZTSNR)
    ours = timestep.ddim_sample_v(pair(v_model), x_T.float(), ts, ZTSNR.float())
    eps = ddim_eps_route(v_model, x_T.float(), ts, ZTSNR.float())
    err_v = (ours.double() - ref).abs().max().item()
    err_eps = (eps.double() - ref).abs().max().item()
    print(f"20-step DDIM, ZTSNR, fp32 vs float64: v route {err_v:.2e}, eps route {err_eps:.2e}")
    assert err_v < 1e-5
    assert err_v <= err_eps


def test_exact_zero_terminal_alpha_bar_is_finite(x_T):
    table = ZTSNR.clone()
    table[-1] = 0.0  # YAML given_betas ending in 1, diffusers' rescale: sigma_T = inf
    ts = timestep.trailing_timesteps(10, timestep.DDIM)
    assert timestep.ddim_sample_v(pair(v_model), x_T.float(), ts, table.float()).isfinite().all()
    assert (
        timestep.plms_sample_v(pair(v_model), x_T.float(), timestep.trailing_timesteps(10, "plms"), table)
        .isfinite()
        .all()
    )
    assert not ddim_eps_route(v_model, x_T.float(), ts, table.float()).isfinite().all()


# --- PLMS -------------------------------------------------------------------------------------------------------------


def point_mass_v(x0_star: torch.Tensor, table: torch.Tensor):
    """v of the ideal denoiser for data concentrated at x0*: x0(x, t) = x0* for every x and t."""

    def f(x, t):
        a = table[int(t)].item()
        return (math.sqrt(a) * x - x0_star) / math.sqrt(1 - a)

    return f


def test_plms_v_equals_ddim_for_an_exact_denoiser(x_T):
    x0_star = torch.linspace(-1, 1, x_T.numel(), dtype=torch.float64).reshape(x_T.shape)
    f = point_mass_v(x0_star, ZTSNR)
    ddim = timestep.ddim_sample_v(pair(f), x_T.clone(), timestep.trailing_timesteps(10, "ddim"), ZTSNR)
    calls = []

    def counting(x, t):
        calls.append(t)
        return pair(f)(x, t)

    plms = timestep.plms_sample_v(counting, x_T.clone(), timestep.trailing_timesteps(10, "plms"), ZTSNR)
    assert len(calls) == 10
    assert calls[0] == 999
    torch.testing.assert_close(plms, ddim, rtol=1e-9, atol=1e-9)


def test_ddim_eta_draws_noise_only_when_eta_positive(x_T):
    ts = timestep.trailing_timesteps(5, timestep.DDIM)
    a = timestep.ddim_sample_v(pair(v_model), x_T.clone(), ts, ZTSNR, eta=0.0)
    b = timestep.ddim_sample_v(pair(v_model), x_T.clone(), ts, ZTSNR, eta=1.0, randn_like=torch.zeros_like)
    assert a.isfinite().all()
    assert b.isfinite().all()
    assert not torch.equal(a, b)


# --- UniPC ------------------------------------------------------------------------------------------------------------


def unipc_eps_route_f64(f, x, steps, table, order=3, variant="bh1"):
    """The same solver fed x0 through the eps route in float64 (no precision loss on a non-ZTSNR table)."""
    ns = timestep.DiscreteVPSchedule(table)

    def as_eps_model(xx, t_input):
        v = f(xx, t_input)
        t = t_input / ns.total_n + 1 / ns.total_n
        a, s = ns.alpha(t), ns.sigma(t)
        eps = a * v + s * xx
        return (a * xx - (xx - s * eps) / a) / s  # the v that the eps route's x0 corresponds to

    return timestep.unipc_sample_v(as_eps_model, x, steps, table, order=order, variant=variant)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("skip_type", ["time_uniform", "time_quadratic", "logSNR"])
def test_unipc_counts_calls_and_starts_at_999(x_T, variant, skip_type):
    calls = []

    def model(x, t):
        calls.append(t)
        return v_model(x, t)

    out = timestep.unipc_sample_v(model, x_T.float(), 12, ZTSNR, skip_type=skip_type, variant=variant)
    assert out.isfinite().all()
    assert len(calls) == 12
    assert calls[0] == pytest.approx(999.0)


def test_unipc_v_matches_diffusers_unipc(x_T):
    from diffusers import UniPCMultistepScheduler

    steps = 9  # time_uniform with 9 steps visits the integer timesteps 999, 888, ..., 111, then 0
    sched = UniPCMultistepScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        timestep_spacing="linspace",
        solver_order=3,
        solver_type="bh1",
        lower_order_final=True,
        final_sigmas_type="sigma_min",
    )
    sched.set_timesteps(steps)
    assert sched.timesteps.tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111]
    x = x_T.clone()
    for t in sched.timesteps:
        x = sched.step(v_model(x, int(t)), t, x).prev_sample
    ours = timestep.unipc_sample_v(v_model, x_T.clone(), steps, SD, order=3, variant="bh1")
    torch.testing.assert_close(ours, x.to(torch.float64), rtol=1e-4, atol=1e-4)


# --- plan rules for the family (lib_vpred.plan._decide_timestep) ------------------------------------------------------


def _sd1_v_plan(name, **changes):
    from lib_vpred.params import defaults
    from lib_vpred.plan import TIMESTEP, ModelFacts, SamplerFacts, decide

    model = ModelFacts(name="m", webui_prediction="v", webui_prediction_reason="YAML", family="SD1")
    return decide(defaults().replace(**changes), model, SamplerFacts(name, TIMESTEP))


@pytest.mark.parametrize("name", ["DDIM", "PLMS", "UniPC", "DDIM CFG++"])
def test_timestep_samplers_are_active_with_trailing(name):
    plan = _sd1_v_plan(name)
    assert plan.active
    assert plan.ztsnr
    assert plan.trailing
    assert (plan.cfg_rescale == 0) == (name == "DDIM CFG++")
    if name == "DDIM CFG++":
        assert any("not applied with DDIM CFG++" in w for w in plan.warnings)


def test_leading_spacing_with_ztsnr_warns_for_ddim_not_unipc():
    assert any("never samples t=999" in w for w in _sd1_v_plan("DDIM", spacing="Schedule type").warnings)
    assert not any("never samples" in w for w in _sd1_v_plan("UniPC", spacing="Schedule type").warnings)
