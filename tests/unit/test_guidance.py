"""lib_vpred.guidance against independent references.

References, none of them lib_vpred itself:
- diffusers ``rescale_noise_cfg`` (Algorithm 2 on the model output), applied in v space;
- float64 conversions written out in this file from the paper's Eq. 11 / 17 / 19 and the k-diffusion VE convention
  (``x = x0 + sigma * eps``, VP sample ``z = x / sqrt(1 + sigma^2)``, ``alpha = 1 / sqrt(1 + sigma^2)``,
  ``s = sigma / sqrt(1 + sigma^2)``, ``v = alpha * eps - s * x0``);
- k-diffusion's ``CompVisVDenoiser`` with a fake inner model;
- A1111's ``CFGDenoiser.combine_denoised``, re-derived below.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.guiders.guider_utils import rescale_noise_cfg
from k_diffusion.external import CompVisVDenoiser

from lib_vpred import guidance, schedule

SIGMAS = [0.03, 1.0, 14.6, 4518.8]
ALPHA_BARS = [0.9, 0.5, 0.01, 4.9e-8]
SHAPE = (4, 4, 8, 8)
CFG_SCALE = 7.5


def _b(value, like: torch.Tensor) -> torch.Tensor:
    """A scalar or [B] value as a float64 tensor broadcastable against ``like`` ([B, C, H, W])."""
    t = torch.as_tensor(value, dtype=torch.float64)
    return t.reshape(-1, *([1] * (like.ndim - 1))) if t.ndim else t


# --- independent float64 references ------------------------------------------------------------------------------


def ref_v_from_x0(x: torch.Tensor, sigma, x0: torch.Tensor) -> torch.Tensor:
    """v implied by a clean-image prediction at the VE noisy input x (paper Eq. 11 in k-diffusion coordinates)."""
    x, x0 = x.double(), x0.double()
    sig = _b(sigma, x)
    eps = (x - x0) / sig
    alpha = 1.0 / torch.sqrt(1.0 + sig**2)
    s = sig / torch.sqrt(1.0 + sig**2)
    return alpha * eps - s * x0


def ref_x0_from_v(x: torch.Tensor, sigma, v: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 19 on the VP sample z = alpha * x: x0 = alpha * z - s * v."""
    x, v = x.double(), v.double()
    sig = _b(sigma, x)
    alpha = 1.0 / torch.sqrt(1.0 + sig**2)
    s = sig / torch.sqrt(1.0 + sig**2)
    return alpha * (alpha * x) - s * v


def ref_rescaled_x0(x, sigma, x0_pos, x0_cfg, phi) -> torch.Tensor:
    """Algorithm 2 in v space via diffusers' rescale_noise_cfg, mapped back to x0."""
    v_pos = ref_v_from_x0(x, sigma, x0_pos)
    v_cfg = ref_v_from_x0(x, sigma, x0_cfg)
    return ref_x0_from_v(x, sigma, rescale_noise_cfg(v_cfg, v_pos, guidance_rescale=phi))


def ref_std(x: torch.Tensor) -> torch.Tensor:
    return x.double().flatten(1).std(dim=1)


def make_denoised_case(sigma, seed: int = 0, dtype=torch.float64):
    """A noisy input and positive / negative / CFG clean-image predictions, as a k-diffusion sampler sees them."""
    g = torch.Generator().manual_seed(seed)
    x0_true = torch.randn(SHAPE, generator=g, dtype=torch.float64) * 0.5
    x = x0_true + _b(sigma, x0_true) * torch.randn(SHAPE, generator=g, dtype=torch.float64)
    pos = x0_true + 0.2 * torch.randn(SHAPE, generator=g, dtype=torch.float64)
    neg = x0_true + 0.3 * torch.randn(SHAPE, generator=g, dtype=torch.float64) - 0.1
    cfg = neg + CFG_SCALE * (pos - neg)
    return x.to(dtype), pos.to(dtype), cfg.to(dtype)


# --- rescale_denoised (k-diffusion / x0 form, maths in v space) ---------------------------------------------------


@pytest.mark.parametrize("phi", [0.3, 0.7, 1.0])
@pytest.mark.parametrize("sigma", [*SIGMAS, "per-sample"])
def test_rescale_denoised_matches_diffusers_in_v_space(sigma, phi: float):
    sigma = torch.tensor(SIGMAS, dtype=torch.float64) if sigma == "per-sample" else sigma
    x, pos, cfg = make_denoised_case(sigma)
    ours = guidance.rescale_denoised(x, sigma, pos, cfg, phi)
    assert ours.dtype == torch.float64
    ref = ref_rescaled_x0(x, sigma, pos, cfg, phi)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-10)
    # and it really changed something (the test would notice a no-op)
    assert (ours - cfg).abs().max().item() > 1e-3


def test_rescale_denoised_is_not_the_x0_space_operator():
    # Rescaling x0 directly (Seshelle / neutral-prompt) is a different operator; at low sigma they differ clearly.
    x, pos, cfg = make_denoised_case(0.03)
    ours = guidance.rescale_denoised(x, 0.03, pos, cfg, 0.7)
    x0_space = rescale_noise_cfg(cfg, pos, guidance_rescale=0.7)
    assert (ours - x0_space).abs().max().item() > 1e-2


def test_rescale_denoised_scalar_tensor_and_per_sample_sigma_agree():
    x, pos, cfg = make_denoised_case(14.6)
    a = guidance.rescale_denoised(x, 14.6, pos, cfg, 0.7)
    b = guidance.rescale_denoised(x, torch.tensor(14.6, dtype=torch.float64), pos, cfg, 0.7)
    c = guidance.rescale_denoised(x, torch.full((SHAPE[0],), 14.6, dtype=torch.float64), pos, cfg, 0.7)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=1e-15, atol=0)


def test_rescale_denoised_phi_zero_is_plain_cfg():
    x, pos, cfg = make_denoised_case(1.0, dtype=torch.float32)
    snapshot = cfg.clone()
    out = guidance.rescale_denoised(x, 1.0, pos, cfg, 0.0)
    assert out is cfg
    assert torch.equal(out, snapshot)
    assert guidance.rescale_denoised(x, 1.0, pos, cfg, 0) is cfg


@pytest.mark.parametrize("sigma", SIGMAS)
def test_rescale_denoised_phi_one_matches_positive_std_in_v(sigma: float):
    x, pos, cfg = make_denoised_case(sigma)
    out = guidance.rescale_denoised(x, sigma, pos, cfg, 1.0)
    std_final = ref_std(ref_v_from_x0(x, sigma, out))
    std_pos = ref_std(ref_v_from_x0(x, sigma, pos))
    std_cfg = ref_std(ref_v_from_x0(x, sigma, cfg))
    torch.testing.assert_close(std_final, std_pos, rtol=1e-9, atol=0)
    assert bool((std_cfg > 1.5 * std_pos).all()), "the case must actually need rescaling"


def test_rescale_denoised_float32_phi_one_std():
    sigma = torch.tensor(SIGMAS, dtype=torch.float32)
    x, pos, cfg = make_denoised_case(sigma.double(), dtype=torch.float32)
    out = guidance.rescale_denoised(x, sigma, pos, cfg, 1.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        ref_std(ref_v_from_x0(x, sigma.double(), out)),
        ref_std(ref_v_from_x0(x, sigma.double(), pos)),
        rtol=1e-4,
        atol=0,
    )


def test_rescale_denoised_batch_independence():
    sigma = torch.tensor(SIGMAS, dtype=torch.float32)
    x, pos, cfg = make_denoised_case(sigma.double(), seed=1, dtype=torch.float32)
    out = guidance.rescale_denoised(x, sigma, pos, cfg, 0.7)
    # Replace every other sample (inputs and sigma): sample 0 must not move by a single bit.
    x2, pos2, cfg2 = make_denoised_case(sigma.double(), seed=2, dtype=torch.float32)
    for t_new, t_old in ((x2, x), (pos2, pos), (cfg2, cfg)):
        t_new[0] = t_old[0]
    sigma2 = torch.tensor([SIGMAS[0], 7.0, 0.5, 100.0])
    out2 = guidance.rescale_denoised(x2, sigma2, pos2, cfg2, 0.7)
    assert torch.equal(out2[0], out[0])
    # ... and equals the sample processed alone
    alone = guidance.rescale_denoised(x[:1], sigma[:1], pos[:1], cfg[:1], 0.7)
    torch.testing.assert_close(alone[0], out[0], rtol=1e-6, atol=1e-7)


def _naive_half_v_route(x, sigma, pos, cfg, phi):
    """What a half-precision implementation of the v conversion would do (no upcast)."""
    s = torch.tensor(sigma, dtype=x.dtype)
    s2 = s * s + 1  # overflows fp16 at sigma = 4518.8
    v_pos = (x / s2 - pos) * s2.sqrt() / s
    v_cfg = (x / s2 - cfg) * s2.sqrt() / s
    ratio = v_pos.std(dim=[1, 2, 3], keepdim=True) / v_cfg.std(dim=[1, 2, 3], keepdim=True)
    return x / s2 - (phi * ratio + 1 - phi) * v_cfg * s / s2.sqrt()


def _naive_half_direct(x, sigma, pos, cfg, phi):
    """lib_vpred's own division-free formula, but evaluated in the half dtype."""
    s = torch.tensor(sigma, dtype=x.dtype)
    x_vp = x / (s * s + 1)
    towards = x_vp - cfg
    ratio = (x_vp - pos).std(dim=[1, 2, 3], keepdim=True) / towards.std(dim=[1, 2, 3], keepdim=True)
    return cfg - phi * (ratio - 1) * towards


def _ulps_off(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Worst error in units of the half dtype's relative rounding (plus 1e-5 absolute for near-zero entries)."""
    eps = torch.finfo(out.dtype).eps
    return ((out.double() - ref).abs() / (eps * ref.abs() + 1e-5)).max().item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_rescale_denoised_half_precision(sigma: float, dtype: torch.dtype):
    x, pos, cfg = make_denoised_case(sigma)
    xh, posh, cfgh = x.to(dtype), pos.to(dtype), cfg.to(dtype)
    out = guidance.rescale_denoised(xh, sigma, posh, cfgh, 0.7)
    assert out.dtype == dtype
    assert bool(torch.isfinite(out).all())
    # Exact answer for the same (rounded) inputs, in float64 via diffusers: ours is within one rounding of it.
    ref = ref_rescaled_x0(xh.double(), sigma, posh.double(), cfgh.double(), 0.7)
    assert _ulps_off(out, ref) <= 1.0
    # Close to the fp32 result (differences come from rounding the inputs).
    out32 = guidance.rescale_denoised(x.float(), sigma, pos.float(), cfg.float(), 0.7)
    torch.testing.assert_close(out.float(), out32, rtol=0, atol=4 * torch.finfo(dtype).eps * out32.abs().max().item())
    # Doing the maths in the half dtype is measurably worse, so the bound above does test the upcast.
    naive_v = _naive_half_v_route(xh, sigma, posh, cfgh, 0.7)
    naive_direct = _naive_half_direct(xh, sigma, posh, cfgh, 0.7)
    if dtype == torch.float16 and sigma > 256:
        assert not bool(torch.isfinite(naive_v).all()), "sigma^2 + 1 overflows fp16: the v route gives inf/nan"
    if sigma < 100 or dtype == torch.float16:
        assert _ulps_off(naive_direct, ref) > 1.0


# --- cfg_rescale (any space) ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("phi", [0.0, 0.25, 0.7, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cfg_rescale_matches_diffusers(phi: float, dtype: torch.dtype):
    g = torch.Generator().manual_seed(3)
    pos = torch.randn(SHAPE, generator=g, dtype=dtype)
    neg = torch.randn(SHAPE, generator=g, dtype=dtype) * 0.8 + 0.1
    cfg = neg + CFG_SCALE * (pos - neg)
    ours = guidance.cfg_rescale(cfg, pos, phi)
    ref = rescale_noise_cfg(cfg, pos, guidance_rescale=phi)
    assert ours.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)


def test_cfg_rescale_phi_zero_returns_same_object():
    cfg = torch.randn(SHAPE)
    assert guidance.cfg_rescale(cfg, torch.randn(SHAPE), 0.0) is cfg


def test_cfg_rescale_zero_std_guard():
    g = torch.Generator().manual_seed(4)
    pos = torch.randn(SHAPE, generator=g)
    cfg = torch.randn(SHAPE, generator=g)
    cfg[1] = 0.25  # a constant guided prediction: std 0
    out = guidance.cfg_rescale(cfg, pos, 0.7)
    assert bool(torch.isfinite(out).all())
    assert torch.equal(out[1], cfg[1])
    torch.testing.assert_close(out[0], rescale_noise_cfg(cfg[:1], pos[:1], 0.7)[0])
    assert not bool(torch.isfinite(rescale_noise_cfg(cfg, pos, 0.7)[1]).all()), "diffusers divides by zero here"


def test_cfg_rescale_std_is_per_sample_unbiased():
    g = torch.Generator().manual_seed(5)
    pos = torch.randn(SHAPE, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(-1, 1, 1, 1)
    cfg = torch.randn(SHAPE, generator=g, dtype=torch.float64) * 10
    out = guidance.cfg_rescale(cfg, pos, 1.0)
    torch.testing.assert_close(ref_std(out), ref_std(pos), rtol=1e-12, atol=0)
    torch.testing.assert_close(guidance.std_per_sample(pos).flatten(), ref_std(pos), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cfg_rescale_half_round_trip(dtype: torch.dtype):
    g = torch.Generator().manual_seed(6)
    pos = torch.randn(SHAPE, generator=g)
    cfg = pos + 6 * torch.randn(SHAPE, generator=g)
    out = guidance.cfg_rescale(cfg.to(dtype), pos.to(dtype), 0.7)
    assert out.dtype == dtype
    ref = rescale_noise_cfg(cfg.to(dtype).double(), pos.to(dtype).double(), 0.7)
    assert _ulps_off(out, ref) <= 1.0


# --- rescale_eps (timestep samplers, eps form, maths in v space) ------------------------------------------------------


def make_eps_case(alpha_bar, seed: int = 7):
    """x_t and eps predictions that are consistent with clean-image predictions (as a real eps model's would be)."""
    g = torch.Generator().manual_seed(seed)
    a = _b(alpha_bar, torch.zeros(SHAPE))
    x0_true = torch.randn(SHAPE, generator=g, dtype=torch.float64) * 0.5
    x_t = a.sqrt() * x0_true + (1 - a).sqrt() * torch.randn(SHAPE, generator=g, dtype=torch.float64)
    x0_pos = x0_true + 0.2 * torch.randn(SHAPE, generator=g, dtype=torch.float64)
    x0_neg = x0_true + 0.3 * torch.randn(SHAPE, generator=g, dtype=torch.float64) - 0.1

    def eps_of(x0):
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    def v_of(x0):  # paper Eq. 11, with the eps implied by x0 at x_t
        return a.sqrt() * eps_of(x0) - (1 - a).sqrt() * x0

    eps_pos, eps_neg = eps_of(x0_pos), eps_of(x0_neg)
    eps_cfg = eps_neg + CFG_SCALE * (eps_pos - eps_neg)
    v_pos, v_neg = v_of(x0_pos), v_of(x0_neg)
    v_cfg = v_neg + CFG_SCALE * (v_pos - v_neg)
    return a, x_t, eps_pos, eps_cfg, v_pos, v_cfg


@pytest.mark.parametrize("phi", [0.3, 0.7, 1.0])
@pytest.mark.parametrize("alpha_bar", [*ALPHA_BARS, "per-sample"])
def test_rescale_eps_matches_diffusers_in_v_space(alpha_bar, phi: float):
    alpha_bar = torch.tensor(ALPHA_BARS, dtype=torch.float64) if alpha_bar == "per-sample" else alpha_bar
    a, x_t, eps_pos, eps_cfg, v_pos, v_cfg = make_eps_case(alpha_bar)
    v_final = rescale_noise_cfg(v_cfg, v_pos, guidance_rescale=phi)
    ref_eps = a.sqrt() * v_final + (1 - a).sqrt() * x_t  # paper Eq. 17
    ours = guidance.rescale_eps(x_t, alpha_bar, eps_pos, eps_cfg, phi)
    torch.testing.assert_close(ours, ref_eps, rtol=1e-9, atol=1e-11)
    assert (ours - eps_cfg).abs().max().item() > 1e-6


def test_rescale_eps_phi_zero_identity():
    _, x_t, eps_pos, eps_cfg, _, _ = make_eps_case(0.5)
    assert guidance.rescale_eps(x_t, 0.5, eps_pos, eps_cfg, 0.0) is eps_cfg


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rescale_eps_dtype_round_trip(dtype: torch.dtype):
    _, x_t, eps_pos, eps_cfg, _, _ = make_eps_case(0.5)
    out = guidance.rescale_eps(x_t.to(dtype), 0.5, eps_pos.to(dtype), eps_cfg.to(dtype), 0.7)
    assert out.dtype == dtype
    ref = guidance.rescale_eps(
        x_t.to(dtype).double(), 0.5, eps_pos.to(dtype).double(), eps_cfg.to(dtype).double(), 0.7
    )
    assert _ulps_off(out, ref) <= 1.0


# --- conversions ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha_bar", [*ALPHA_BARS, "per-sample"])
def test_eps_v_x0_conversions_against_paper(alpha_bar):
    alpha_bar = torch.tensor(ALPHA_BARS, dtype=torch.float64) if alpha_bar == "per-sample" else alpha_bar
    g = torch.Generator().manual_seed(8)
    a = _b(alpha_bar, torch.zeros(SHAPE))
    x0 = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    eps = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0  # Eq. 11
    torch.testing.assert_close(guidance.eps_from_v(x_t, alpha_bar, v), eps, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(guidance.x0_from_v(x_t, alpha_bar, v), x0, rtol=1e-10, atol=1e-12)
    # v_from_eps divides by sqrt(abar): well conditioned except as abar -> 0 (paper Sec. 6)
    worst_a = float(torch.as_tensor(alpha_bar).min())
    tol = 1e-12 / math.sqrt(worst_a)
    torch.testing.assert_close(guidance.v_from_eps(x_t, alpha_bar, eps), v, rtol=tol, atol=tol)
    # round trips
    torch.testing.assert_close(
        guidance.eps_from_v(x_t, alpha_bar, guidance.v_from_eps(x_t, alpha_bar, eps)), eps, rtol=1e-10, atol=1e-10
    )


def test_x0_from_v_exact_at_zero_alpha_bar():
    # At SNR = 0 (abar = 0) the v prediction is minus the clean image: x0 = -v, whatever x_t is (Eq. 19).
    v = torch.randn(SHAPE)
    x_t = torch.randn(SHAPE)
    assert torch.equal(guidance.x0_from_v(x_t, 0.0, v), -v)


@pytest.mark.parametrize("sigma", [*SIGMAS, "per-sample"])
def test_denoised_v_conversions_against_reference(sigma):
    sigma = torch.tensor(SIGMAS, dtype=torch.float64) if sigma == "per-sample" else sigma
    x, x0, _ = make_denoised_case(sigma, seed=9)
    v_ref = ref_v_from_x0(x, sigma, x0)
    torch.testing.assert_close(guidance.v_from_denoised(x, sigma, x0), v_ref, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(guidance.denoised_from_v(x, sigma, v_ref), x0, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(ref_x0_from_v(x, sigma, v_ref), x0, rtol=1e-9, atol=1e-11)  # reference is consistent
    # round trip through lib_vpred only
    back = guidance.denoised_from_v(x, sigma, guidance.v_from_denoised(x, sigma, x0))
    torch.testing.assert_close(back, x0, rtol=1e-9, atol=1e-11)


class FixedVModel:
    """Fake CompVis inner model: returns a known v whatever it is fed; records what k-diffusion passes."""

    def __init__(self, alphas_cumprod: torch.Tensor, v: torch.Tensor) -> None:
        self.alphas_cumprod = alphas_cumprod
        self.v = v
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def apply_model(self, x_in, t, cond):
        self.calls.append((x_in, t))
        return self.v


def test_denoised_from_v_matches_k_diffusion_comp_vis_v_denoiser():
    table = schedule.ztsnr_alphas_cumprod(schedule.scaled_linear_alphas_cumprod())
    kd_sigmas = schedule.sigmas_from_alphas_cumprod(table)
    sigma = torch.stack([kd_sigmas[0], kd_sigmas[500], kd_sigmas[900], kd_sigmas[-1]])  # 0.029 ... 4518.76
    g = torch.Generator().manual_seed(10)
    v = torch.randn(SHAPE, generator=g)
    x = torch.randn(SHAPE, generator=g) * sigma.view(-1, 1, 1, 1)
    model = FixedVModel(table, v)
    denoiser = CompVisVDenoiser(model)
    d_kd = denoiser(x, sigma, cond=None)
    torch.testing.assert_close(guidance.denoised_from_v(x, sigma, v), d_kd, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guidance.v_from_denoised(x, sigma, d_kd), v, rtol=1e-4, atol=1e-4)
    # k-diffusion feeds the model the VP sample x / sqrt(sigma^2 + 1) at t(sigma)
    x_in, t = model.calls[0]
    torch.testing.assert_close(x_in, x / (sigma**2 + 1).sqrt().view(-1, 1, 1, 1))
    torch.testing.assert_close(t, torch.tensor([0.0, 500.0, 900.0, 999.0]), rtol=0, atol=1e-3)


def test_conversions_keep_half_dtype():
    x = torch.randn(SHAPE, dtype=torch.float16)
    d = torch.randn(SHAPE, dtype=torch.float16)
    for fn in (guidance.v_from_denoised, guidance.denoised_from_v):
        assert fn(x, 2.0, d).dtype == torch.float16
    for fn in (guidance.v_from_eps, guidance.eps_from_v, guidance.x0_from_v):
        assert fn(x, 0.5, d).dtype == torch.float16


# --- the WebUI batch layout -------------------------------------------------------------------------------------------


def a1111_combine_denoised(x_out, conds_list, n_images, cond_scale):
    """A1111 v1.10.1 ``CFGDenoiser.combine_denoised``, re-derived in float64: uncond rows are the last ``n_images``."""
    x_out = x_out.double()
    denoised_uncond = x_out[-n_images:]
    denoised = denoised_uncond.clone()
    for i, conds in enumerate(conds_list):
        for cond_index, weight in conds:
            denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * cond_scale)
    return denoised


def make_batch(dtype=torch.float32):
    """3 images: image 0 one prompt, image 1 'a AND b :0.4' (two rows), image 2 one prompt; then 3 uncond rows."""
    g = torch.Generator().manual_seed(11)
    conds_list = [[(0, 1.0)], [(1, 1.0), (2, 0.4)], [(3, 1.0)]]
    x_out = torch.randn(4 + 3, 4, 8, 8, generator=g).to(dtype)
    return x_out, conds_list, x_out[-3:]


@pytest.mark.parametrize("cond_scale", [1.0, 7.5])
def test_combine_conds_matches_a1111_layout(cond_scale: float):
    x_out, conds_list, uncond = make_batch()
    snapshot = x_out.clone()
    ours = guidance.combine_conds(x_out, conds_list, uncond, cond_scale)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(
        ours.double(), a1111_combine_denoised(x_out, conds_list, 3, cond_scale), rtol=1e-6, atol=1e-5
    )
    assert torch.equal(x_out, snapshot), "inputs must not be modified"


def test_positive_prediction_with_and_parts():
    x_out, conds_list, uncond = make_batch(torch.float64)
    pos = guidance.positive_prediction(x_out, conds_list, uncond)
    # image 1: uncond + sum_k w_k (cond_k - uncond)
    expected_1 = uncond[1] + 1.0 * (x_out[1] - uncond[1]) + 0.4 * (x_out[2] - uncond[1])
    torch.testing.assert_close(pos[1], expected_1, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(pos[0], x_out[0], rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(pos[2], x_out[3], rtol=1e-14, atol=1e-14)


def test_positive_prediction_single_cond_close():
    x_out, conds_list, uncond = make_batch()
    pos = guidance.positive_prediction(x_out, conds_list, uncond)
    torch.testing.assert_close(pos[0], x_out[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(pos[2], x_out[3], rtol=0, atol=1e-6)


def test_positive_prediction_single_cond_is_that_row_exactly():
    x_out, conds_list, uncond = make_batch()
    pos = guidance.positive_prediction(x_out, conds_list, uncond)
    assert torch.equal(pos[0], x_out[0])
    assert torch.equal(pos[2], x_out[3])


def test_combine_conds_half_dtype():
    x_out, conds_list, uncond = make_batch(torch.float16)
    out = guidance.combine_conds(x_out, conds_list, uncond, 7.5)
    assert out.dtype == torch.float16
    ref = a1111_combine_denoised(x_out, conds_list, 3, 7.5)
    assert _ulps_off(out, ref) <= 1.0


def test_combine_conds_mismatch_raises():
    x_out, conds_list, uncond = make_batch()
    with pytest.raises(ValueError, match="conds_list has 2 images but uncond has 3 rows"):
        guidance.combine_conds(x_out, conds_list[:2], uncond, 7.5)
    with pytest.raises(ValueError, match="images"):
        guidance.positive_prediction(x_out, conds_list, uncond[:2])


def test_combine_conds_single_prompts_with_a_common_weight_match_a1111():
    # 'a cat :1.2' is one sub-prompt of weight 1.2: all images are combined at once, as the WebUI's loop would
    g = torch.Generator().manual_seed(12)
    x_out = torch.randn(6, 4, 8, 8, generator=g)
    conds_list = [[(0, 1.2)], [(1, 1.2)], [(2, 1.2)]]
    for cond_scale in (1.0, 7.5):
        ours = guidance.combine_conds(x_out, conds_list, x_out[-3:], cond_scale)
        ref = a1111_combine_denoised(x_out, conds_list, 3, cond_scale)
        torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=1e-5)
    pos = guidance.positive_prediction(x_out, conds_list, x_out[-3:])
    torch.testing.assert_close(pos.double(), a1111_combine_denoised(x_out, conds_list, 3, 1.0), rtol=1e-6, atol=1e-6)


def test_positive_prediction_rows_out_of_order_are_gathered():
    g = torch.Generator().manual_seed(13)
    x_out = torch.randn(6, 4, 8, 8, generator=g)
    conds_list = [[(2, 1.0)], [(0, 1.0)], [(1, 1.0)]]
    pos = guidance.positive_prediction(x_out, conds_list, x_out[-3:])
    assert torch.equal(pos, torch.stack([x_out[2], x_out[0], x_out[1]]))


def test_combine_conds_at_scale_one_returns_a_new_tensor():
    x_out, _, _ = make_batch()
    conds_list = [[(0, 1.0)], [(1, 1.0)], [(2, 1.0)]]
    snapshot = x_out.clone()
    out = guidance.combine_conds(x_out, conds_list, x_out[-3:], 1.0)
    assert torch.equal(out, x_out[:3])
    out += 1.0
    assert torch.equal(x_out, snapshot)


def test_rescale_denoised_and_eps_leave_a_constant_guided_prediction_unchanged():
    # std 0 in v space: D_cfg - x / (sigma^2 + 1) constant over sample 1 (x = 0 there, so exactly constant)
    x, pos, cfg = make_denoised_case(2.5, dtype=torch.float32)
    x[1], cfg[1] = 0.0, 0.25
    out = guidance.rescale_denoised(x, 2.5, pos, cfg, 0.7)
    assert bool(torch.isfinite(out).all())
    assert torch.equal(out[1], cfg[1])
    torch.testing.assert_close(out[0], guidance.rescale_denoised(x[:1], 2.5, pos[:1], cfg[:1], 0.7)[0])
    _, x_t, eps_pos, eps_cfg, _, _ = make_eps_case(0.5)
    x_t[2], eps_cfg[2] = 0.0, -0.5  # eps - sqrt(1 - abar) x_t constant over sample 2: v constant
    out = guidance.rescale_eps(x_t, 0.5, eps_pos, eps_cfg, 0.7)
    assert bool(torch.isfinite(out).all())
    assert torch.equal(out[2], eps_cfg[2])
