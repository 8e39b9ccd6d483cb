"""lib_vpred.schedule against independent references.

References used here, none of them lib_vpred itself:
- diffusers ``rescale_zero_terminal_snr`` (Algorithm 1 on betas) and ``DDIMScheduler(timestep_spacing=...)``;
- numpy float64 re-derivations of the paper's formulas written out in this file (arXiv 2305.08891, Alg. 1, Table 2);
- k-diffusion's ``DiscreteSchedule`` / ``CompVisDenoiser`` sigma buffers;
- A1111's "Simple" scheduler formula, re-derived below.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_rescale_zero_terminal_snr
from k_diffusion.external import CompVisDenoiser, CompVisVDenoiser, DiscreteSchedule

from lib_vpred import schedule

T = 1000
TERMINAL = 4.8973451890853435e-08  # A1111/ComfyUI clamp (peers.md §3, style.md §3)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --- independent numpy float64 re-derivations --------------------------------------------------------------------------


def np_sd_alphas_cumprod() -> np.ndarray:
    """SD1.5 "scaled_linear" betas 0.00085..0.012 over 1000 steps (LDM make_beta_schedule), cumprod of 1 - beta."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, T, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def np_ztsnr_alphas_cumprod(terminal: float | None = TERMINAL) -> np.ndarray:
    """Paper Algorithm 1 in sqrt(alpha_bar) space, then (optionally) the WebUI's finite terminal clamp."""
    s = np.sqrt(np_sd_alphas_cumprod())
    s = (s - s[-1]) * s[0] / (s[0] - s[-1])
    out = s**2
    if terminal is not None:
        out[-1] = terminal
    return out


def np_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    return np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)


class FakeCompVisModel:
    """The only thing k-diffusion's CompVis wrappers read from the model at construction: ``alphas_cumprod``."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        self.alphas_cumprod = alphas_cumprod


@pytest.fixture(scope="module")
def sd_abar64() -> torch.Tensor:
    return schedule.scaled_linear_alphas_cumprod()


@pytest.fixture(scope="module")
def ztsnr32(sd_abar64: torch.Tensor) -> torch.Tensor:
    return schedule.ztsnr_alphas_cumprod(sd_abar64)


# --- the stock table -------------------------------------------------------------------------------------------------


def test_scaled_linear_table_matches_numpy_and_diffusers():
    ours = schedule.scaled_linear_alphas_cumprod()
    assert ours.dtype == torch.float64
    assert ours.shape == (T,)
    np.testing.assert_allclose(ours.numpy(), np_sd_alphas_cumprod(), rtol=1e-14, atol=0)
    ddim = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=T)
    # diffusers builds its table in float32; agreement to float32 rounding.
    np.testing.assert_allclose(ours.numpy(), ddim.alphas_cumprod.double().numpy(), rtol=2e-6, atol=0)


def test_stock_sigma_range_golden(sd_abar64: torch.Tensor):
    # style.md §3: sigma_min = 0.029167, sigma_max = 14.6146 without ZTSNR; paper Table 1: sqrt(abar_T) = 0.068265.
    sig = schedule.sigmas_from_alphas_cumprod(sd_abar64)
    assert sig[0].item() == pytest.approx(0.029167, abs=5e-7)
    assert sig[-1].item() == pytest.approx(14.6146, abs=5e-5)
    assert math.sqrt(sd_abar64[-1].item()) == pytest.approx(0.068265, abs=5e-7)
    assert not schedule.is_zero_terminal_snr(sd_abar64)


# --- Algorithm 1 -----------------------------------------------------------------------------------------------------


def test_rescale_matches_diffusers_float64(sd_abar64: torch.Tensor):
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
    ref = torch.cumprod(1.0 - diffusers_rescale_zero_terminal_snr(betas), dim=0)
    ours = schedule.rescale_zero_terminal_snr(sd_abar64)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-15)
    # ... and the numpy re-derivation of Algorithm 1
    np.testing.assert_allclose(ours.numpy(), np_ztsnr_alphas_cumprod(terminal=None), rtol=1e-12, atol=1e-15)


def test_rescale_first_entry_unchanged_last_exactly_zero(sd_abar64: torch.Tensor):
    ours = schedule.rescale_zero_terminal_snr(sd_abar64)
    assert ours[0].item() == sd_abar64[0].item()  # bit for bit
    assert ours[-1].item() == 0.0
    assert bool((ours[1:] < ours[:-1]).all()), "still strictly decreasing"
    assert schedule.is_zero_terminal_snr(ours)


def test_ztsnr_sigma_max_and_terminal_golden(ztsnr32: torch.Tensor):
    assert ztsnr32.dtype == torch.float32
    assert ztsnr32.shape == (T,)
    # Last entry is the WebUI clamp, as float32.
    assert ztsnr32[-1].item() == torch.tensor(TERMINAL, dtype=torch.float32).item()
    # Golden sigma_max from an independent numpy float64 computation: sqrt((1 - a)/a) at a = 4.8973451890853435e-08.
    golden_sigma_max = math.sqrt((1.0 - TERMINAL) / TERMINAL)
    assert golden_sigma_max == pytest.approx(4518.7637, abs=5e-5)  # style.md §3
    sig = schedule.sigmas_from_alphas_cumprod(ztsnr32)
    assert sig[-1].item() == pytest.approx(golden_sigma_max, rel=1e-6)
    # float32 table: 1 - abar_0 ~ 8.5e-4 carries float32 rounding of abar_0 (~6e-8), so sigma_min is good to ~4e-5.
    assert sig[0].item() == pytest.approx(0.029167, rel=4e-5)
    assert bool(torch.isfinite(sig).all())
    np.testing.assert_allclose(ztsnr32.double().numpy(), np_ztsnr_alphas_cumprod(), rtol=1e-6, atol=1e-9)


def test_ztsnr_idempotent_on_ztsnr_table(ztsnr32: torch.Tensor, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="vpred"):
        again = schedule.ztsnr_alphas_cumprod(ztsnr32)
    assert torch.equal(again, ztsnr32)
    assert any("not rescaled again" in r.getMessage() and r.name == "vpred" for r in caplog.records)


def test_ztsnr_first_rescale_does_not_claim_already_zero(sd_abar64: torch.Tensor, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="vpred"):
        schedule.ztsnr_alphas_cumprod(sd_abar64)
    assert not any("not rescaled again" in r.getMessage() for r in caplog.records)


def test_ztsnr_makes_zero_terminal_finite_without_rescaling_again(
    sd_abar64: torch.Tensor, ztsnr32: torch.Tensor, caplog: pytest.LogCaptureFixture
):
    exact_zero = schedule.rescale_zero_terminal_snr(sd_abar64)  # sd-scripts style: abar_T == 0 exactly
    assert exact_zero[-1].item() == 0.0
    with caplog.at_level(logging.INFO, logger="vpred"):
        out = schedule.ztsnr_alphas_cumprod(exact_zero)
    assert torch.equal(out, ztsnr32)
    assert out[-1].item() > 0.0
    assert bool(torch.isfinite(schedule.sigmas_from_alphas_cumprod(out)).all())
    assert any("not rescaled again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ztsnr_half_precision_input(sd_abar64: torch.Tensor, ztsnr32: torch.Tensor, dtype: torch.dtype):
    half_in = sd_abar64.to(dtype)
    out = schedule.ztsnr_alphas_cumprod(half_in)
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
    sig = schedule.sigmas_from_alphas_cumprod(out)
    assert bool(torch.isfinite(sig).all())
    assert sig[-1].item() == pytest.approx(4518.7637, abs=1e-3)
    # Maths in float64: identical to rescaling the same (rounded) input upcast first.
    assert torch.equal(out, schedule.ztsnr_alphas_cumprod(half_in.to(torch.float64)))
    # Close to the fp32 result, within the input's own rounding (2 ulps of the dtype at 1.0).
    torch.testing.assert_close(out, ztsnr32, rtol=0, atol=2 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ztsnr_half_precision_output_is_finite(sd_abar64: torch.Tensor, dtype: torch.dtype):
    # 4.897e-8 is below fp16's smallest subnormal step, so it rounds (to 2**-24 in fp16), but must never become 0/inf.
    out = schedule.ztsnr_alphas_cumprod(sd_abar64, dtype=dtype)
    assert out.dtype == dtype
    assert out[-1].item() > 0.0
    assert bool(torch.isfinite(schedule.sigmas_from_alphas_cumprod(out)).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ztsnr_device_and_dtype(sd_abar64: torch.Tensor, device: str, dtype: torch.dtype):
    out = schedule.ztsnr_alphas_cumprod(sd_abar64.to(device), dtype=dtype)
    assert out.device.type == device
    assert out.dtype == dtype
    resc = schedule.rescale_zero_terminal_snr(sd_abar64.to(device, torch.float32))
    assert resc.device.type == device
    assert resc.dtype == torch.float64


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (lambda a: a.reshape(1000, 1), "1-D"),
        (lambda a: a.reshape(2, 500), "1-D"),
        (lambda a: a[:1], "at least 2"),
        (lambda a: a.new_zeros(0), "1-D"),
        (lambda a: a[0], "1-D"),
        (lambda a: a.flip(0), "decrease"),
    ],
    ids=["col", "2x500", "one-entry", "empty", "scalar", "increasing"],
)
def test_rescale_bad_input(sd_abar64: torch.Tensor, bad, match: str):
    with pytest.raises(ValueError, match=match):
        schedule.rescale_zero_terminal_snr(bad(sd_abar64))


@pytest.mark.parametrize(
    "bad",
    [
        lambda a: a.reshape(1000, 1),
        lambda a: a[:1],
        lambda a: a.flip(0),
    ],
    ids=["col", "one-entry", "increasing"],
)
def test_ztsnr_bad_input_value_error(sd_abar64: torch.Tensor, bad):
    with pytest.raises(ValueError, match=r"1-D|decrease|at least 2"):
        schedule.ztsnr_alphas_cumprod(bad(sd_abar64))


@pytest.mark.parametrize(
    "bad",
    [lambda a: a.reshape(2, 500), lambda a: a.new_zeros(0), lambda a: a[0]],
    ids=["2x500", "empty", "scalar"],
)
def test_ztsnr_bad_shape_raises_value_error(sd_abar64: torch.Tensor, bad):
    with pytest.raises(ValueError, match="1-D"):
        schedule.ztsnr_alphas_cumprod(bad(sd_abar64))


def test_ztsnr_already_zero_branch_validates_shape(ztsnr32: torch.Tensor):
    with pytest.raises(ValueError, match="1-D"):
        schedule.ztsnr_alphas_cumprod(ztsnr32.reshape(1000, 1))


def test_inputs_not_mutated(sd_abar64: torch.Tensor, ztsnr32: torch.Tensor):
    a, z = sd_abar64.clone(), ztsnr32.clone()
    zero = schedule.rescale_zero_terminal_snr(sd_abar64)
    zero_copy = zero.clone()
    schedule.rescale_zero_terminal_snr(sd_abar64)
    schedule.ztsnr_alphas_cumprod(sd_abar64, dtype=torch.float64)
    schedule.ztsnr_alphas_cumprod(ztsnr32)
    schedule.ztsnr_alphas_cumprod(zero, dtype=torch.float64)
    assert torch.equal(sd_abar64, a)
    assert torch.equal(ztsnr32, z)
    assert torch.equal(zero, zero_copy)


@pytest.mark.parametrize("terminal", [0.0, -1e-8, 1e-6, 1e-3, float("nan"), float("inf")])
def test_ztsnr_bad_terminal(sd_abar64: torch.Tensor, terminal: float):
    with pytest.raises(ValueError, match="terminal"):
        schedule.ztsnr_alphas_cumprod(sd_abar64, terminal=terminal)


def test_ztsnr_custom_terminal_diffusers_value(sd_abar64: torch.Tensor):
    # diffusers' sigma schedulers clamp to 2**-24 instead: sigma_max = sqrt(2**24 - 1) ~ 4096.
    out = schedule.ztsnr_alphas_cumprod(sd_abar64, terminal=2.0**-24, dtype=torch.float64)
    assert out[-1].item() == 2.0**-24
    assert schedule.sigmas_from_alphas_cumprod(out)[-1].item() == pytest.approx(math.sqrt(2.0**24 - 1), rel=1e-12)


# --- sigma <-> alpha_bar ---------------------------------------------------------------------------------------------


def test_sigma_alpha_round_trip(sd_abar64: torch.Tensor, ztsnr32: torch.Tensor):
    for table, rtol in ((sd_abar64, 1e-13), (schedule.ztsnr_alphas_cumprod(sd_abar64, dtype=torch.float64), 1e-13)):
        back = schedule.alphas_cumprod_from_sigmas(schedule.sigmas_from_alphas_cumprod(table))
        torch.testing.assert_close(back, table, rtol=rtol, atol=0)
    back32 = schedule.alphas_cumprod_from_sigmas(schedule.sigmas_from_alphas_cumprod(ztsnr32))
    assert back32.dtype == torch.float32
    torch.testing.assert_close(back32, ztsnr32, rtol=1e-6, atol=0)
    # sigma = 0 <-> alpha_bar = 1
    assert schedule.alphas_cumprod_from_sigmas(torch.zeros(1)).item() == 1.0


def test_sigma_dtype_promotion():
    half = torch.tensor([0.5, 0.25], dtype=torch.float16)
    assert schedule.sigmas_from_alphas_cumprod(half).dtype == torch.float32
    assert schedule.alphas_cumprod_from_sigmas(half).dtype == torch.float32
    assert schedule.sigmas_from_alphas_cumprod(half.double()).dtype == torch.float64


@pytest.mark.parametrize("wrapper", [CompVisDenoiser, CompVisVDenoiser])
@pytest.mark.parametrize("which", ["stock", "ztsnr"])
def test_sigmas_agree_with_k_diffusion_buffer(sd_abar64: torch.Tensor, wrapper, which: str):
    table = sd_abar64.float() if which == "stock" else schedule.ztsnr_alphas_cumprod(sd_abar64)
    kd = wrapper(FakeCompVisModel(table))
    ours = schedule.sigmas_from_alphas_cumprod(table)
    assert kd.sigmas.dtype == ours.dtype == torch.float32
    # k-diffusion computes in float32, we in float64 then round: a few ulps apart at most.
    torch.testing.assert_close(ours, kd.sigmas, rtol=1e-6, atol=0)
    assert bool(torch.isfinite(kd.log_sigmas).all())
    # float64 tables: same expression in the same precision.
    kd64 = DiscreteSchedule(((1 - table.double()) / table.double()) ** 0.5, quantize=False)
    torch.testing.assert_close(schedule.sigmas_from_alphas_cumprod(table.double()), kd64.sigmas, rtol=1e-15, atol=0)


# --- Table 2 spacings ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffusers_timesteps() -> dict[str, dict[int, torch.Tensor]]:
    out: dict[str, dict[int, torch.Tensor]] = {}
    for spacing in schedule.SPACINGS:
        ddim = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=0)
        per_n = {}
        for n in range(1, T + 1):
            ddim.set_timesteps(n)
            per_n[n] = ddim.timesteps.clone()
        out[spacing] = per_n
    return out


@pytest.mark.parametrize("spacing", schedule.SPACINGS)
def test_spaced_timesteps_match_diffusers_every_n(
    diffusers_timesteps: dict[str, dict[int, torch.Tensor]], spacing: str
):
    overshoot = []
    for n in range(1, T + 1):
        ref = diffusers_timesteps[spacing][n]
        ours = schedule.spaced_timesteps(n, spacing)
        assert ours.dtype == torch.int64
        assert ours.shape == (n,), n
        if ref.shape[0] == n + 1:
            # Known diffusers defect: numpy arange(T, 0, -T/n) overshoots and adds a trailing timestep -1.
            assert spacing == "trailing"
            assert ref[-1].item() == -1, n
            overshoot.append(n)
            ref = ref[:n]
        assert torch.equal(ours, ref), (spacing, n, ours, ref)
        assert bool((ours[1:] < ours[:-1]).all()), (spacing, n)
        assert ours.min().item() >= 0
        assert ours.max().item() <= T - 1
    if spacing == "trailing":
        assert {61, 103, 121}.issubset(overshoot)
        # diffusers 0.42.1 with numpy 1.26: 62 values of n in 1..1000 return n + 1 trailing timesteps.
        independent = [n for n in range(1, T + 1) if len(np.arange(T, 0, -T / n)) == n + 1]
        assert overshoot == independent
        assert len(overshoot) == 62
    else:
        assert overshoot == []


def test_trailing_always_starts_at_last_timestep():
    for n in range(1, T + 1):
        assert schedule.spaced_timesteps(n, "trailing")[0].item() == T - 1


def test_paper_table_2_s10():
    # Paper Table 2 (1-based) shifted to 0-based code indices.
    assert schedule.spaced_timesteps(10, "trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert schedule.spaced_timesteps(10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert schedule.spaced_timesteps(10, "linspace").tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    # diffusers docstring example for 20 trailing steps (peers.md §2)
    t20 = schedule.spaced_timesteps(20, "trailing").tolist()
    assert t20[:2] == [999, 949]
    assert t20[-1] == 49


def test_spaced_timesteps_other_train_length():
    assert schedule.spaced_timesteps(4, "trailing", num_train_timesteps=100).tolist() == [99, 74, 49, 24]
    assert schedule.spaced_timesteps(1, "linspace", num_train_timesteps=100).tolist() == [0]


@pytest.mark.parametrize(("steps", "exc"), [(0, ValueError), (-1, ValueError), (1001, ValueError)])
def test_spaced_timesteps_bad_steps_range(steps: int, exc: type[Exception]):
    with pytest.raises(exc, match="between 1 and 1000"):
        schedule.spaced_timesteps(steps, "trailing")


@pytest.mark.parametrize("steps", [10.0, True, "10", None])
def test_spaced_timesteps_bad_steps_type(steps):
    with pytest.raises(TypeError, match="steps must be an int"):
        schedule.spaced_timesteps(steps, "trailing")


@pytest.mark.parametrize("spacing", ["nonsense", "", "karras"])
def test_spaced_timesteps_unknown_spacing(spacing: str):
    with pytest.raises(ValueError, match="leading, linspace, trailing"):
        schedule.spaced_timesteps(10, spacing)


@pytest.mark.parametrize("train", [0, -5, 10.0, True])
def test_spaced_timesteps_bad_train_length(train):
    with pytest.raises(ValueError, match="num_train_timesteps"):
        schedule.spaced_timesteps(1, "trailing", num_train_timesteps=train)


# --- trailing_sigmas -------------------------------------------------------------------------------------------------


def test_trailing_sigmas_golden_n10(ztsnr32: torch.Tensor):
    model_sigmas = schedule.sigmas_from_alphas_cumprod(ztsnr32)
    out = schedule.trailing_sigmas(model_sigmas, 10)
    # style.md §3 golden, as printed there (4-5 significant digits): half a unit of the last printed digit.
    golden = [4518.7637, 18.13, 7.4107, 4.1142, 2.6049, 1.7681, 1.2414, 0.8747, 0.5948, 0.355, 0.0]
    decimals = [4, 2, 4, 4, 4, 4, 4, 4, 4, 3, 0]
    for got, want, dec in zip(out.tolist(), golden, decimals, strict=True):
        assert got == pytest.approx(want, abs=0.5 * 10.0**-dec + 1e-9), (got, want)
    # Independent float64 recomputation from the paper's formulas.
    ref = np.append(np_sigmas(np_ztsnr_alphas_cumprod())[np.arange(999, 0, -100)], 0.0)
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=2e-6, atol=0)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 20, 30, 61, 103, 333, 999, 1000])
def test_trailing_sigmas_shape_and_order(ztsnr32: torch.Tensor, n: int):
    model_sigmas = schedule.sigmas_from_alphas_cumprod(ztsnr32)
    out = schedule.trailing_sigmas(model_sigmas, n)
    assert out.shape == (n + 1,)
    assert out[-1].item() == 0.0
    assert out[0].item() == model_sigmas[-1].item()
    assert bool((out[1:] < out[:-1]).all())
    # every nonzero entry is one of the model's own sigmas
    assert bool(torch.isin(out[:-1], model_sigmas).all())


def a1111_simple_scheduler(model_sigmas: torch.Tensor, n: int) -> list[float]:
    """A1111 ``sd_schedulers.simple_scheduler``, re-derived: ``sigmas[-(1 + int(x * len / n))]`` then 0."""
    ss = len(model_sigmas) / n
    return [float(model_sigmas[-(1 + int(x * ss))]) for x in range(n)] + [0.0]


def test_trailing_sigmas_equal_a1111_simple_when_n_divides_1000(ztsnr32: torch.Tensor):
    model_sigmas = schedule.sigmas_from_alphas_cumprod(ztsnr32)
    divisors = [n for n in range(1, T + 1) if T % n == 0]
    for n in divisors:
        assert schedule.trailing_sigmas(model_sigmas, n).tolist() == a1111_simple_scheduler(model_sigmas, n), n
    # For other n the two roundings (round vs truncate) differ, e.g. n = 3: A1111 visits t = 333, trailing t = 332.
    differ = [
        n
        for n in range(1, 101)
        if schedule.trailing_sigmas(model_sigmas, n).tolist() != a1111_simple_scheduler(model_sigmas, n)
    ]
    assert 3 in differ
    assert not set(differ) & set(divisors)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_trailing_sigmas_device_dtype(ztsnr32: torch.Tensor, device: str, dtype: torch.dtype):
    model_sigmas = schedule.sigmas_from_alphas_cumprod(ztsnr32).to(device, dtype)
    out = schedule.trailing_sigmas(model_sigmas, 10)
    assert out.device.type == device
    assert out.dtype == dtype
    assert bool(torch.isfinite(out).all())


def test_trailing_sigmas_match_k_diffusion_t_to_sigma(ztsnr32: torch.Tensor):
    kd = CompVisVDenoiser(FakeCompVisModel(ztsnr32))
    out = schedule.trailing_sigmas(kd.sigmas, 10)
    t = torch.arange(999, 0, -100, dtype=torch.float32)
    torch.testing.assert_close(out[:-1], kd.t_to_sigma(t), rtol=1e-5, atol=0)
    # and k-diffusion maps them back to the same integer timesteps
    torch.testing.assert_close(kd.sigma_to_t(out[:-1]), t, rtol=0, atol=1e-3)


# --- exponential_sigmas (Timestep spacing: Auto for DPM++ 2M and LMS) -------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 10, 20, 30, 150])
@pytest.mark.parametrize("which", ["ztsnr", "stock"])
def test_exponential_sigmas_equal_k_diffusion_exponential_over_the_table(
    sd_abar64: torch.Tensor, ztsnr32: torch.Tensor, n: int, which: str
):
    """Independent reference: k-diffusion's ``get_sigmas_exponential`` called the way the WebUI calls its Exponential
    schedule type (``sigma_min, sigma_max = model_wrap.sigmas[0], [-1]``), on a k-diffusion wrapper's own table."""
    import k_diffusion.sampling

    table = ztsnr32 if which == "ztsnr" else sd_abar64.to(torch.float32)
    wrap = CompVisVDenoiser(FakeCompVisModel(table))
    want = k_diffusion.sampling.get_sigmas_exponential(n, wrap.sigmas[0].item(), wrap.sigmas[-1].item())
    got = schedule.exponential_sigmas(wrap.sigmas, n)
    assert got.shape == (n + 1,)
    assert got.dtype == wrap.sigmas.dtype
    # bit for bit: Auto's exponential and the WebUI's Exponential schedule type give the same image
    assert torch.equal(got, want), (got, want)
    assert got[-1].item() == 0.0
    assert bool((got[1:] < got[:-1]).all())


def test_exponential_sigmas_start_at_pure_noise_and_end_at_sigma_min(ztsnr32: torch.Tensor):
    model_sigmas = schedule.sigmas_from_alphas_cumprod(ztsnr32)
    out = schedule.exponential_sigmas(model_sigmas, 20).double()
    # float64 from the paper's formulas (np_ztsnr_alphas_cumprod): log-even from sigma_T to sigma_0
    ref = np_sigmas(np_ztsnr_alphas_cumprod())
    want = np.append(np.exp(np.linspace(np.log(ref[-1]), np.log(ref[0]), 20)), 0.0)
    # the input table is float32 (sigma_min to ~1e-5 relative), spread over the log range
    np.testing.assert_allclose(out.numpy(), want, rtol=3e-5, atol=0)
    assert out[0].item() == pytest.approx(4518.76, abs=0.01)  # t = 999, where trailing starts too
    assert out[-2].item() == pytest.approx(0.0292, abs=1e-4)  # where trailing stops at 0.231 (t = 49)


@pytest.mark.parametrize("steps", [0, -1, 2.0, True])
def test_exponential_sigmas_bad_steps(ztsnr32: torch.Tensor, steps):
    with pytest.raises(ValueError, match="steps"):
        schedule.exponential_sigmas(schedule.sigmas_from_alphas_cumprod(ztsnr32), steps)


def test_spacing_sigmas_dispatch(ztsnr32: torch.Tensor):
    model_sigmas = schedule.sigmas_from_alphas_cumprod(ztsnr32)
    assert torch.equal(schedule.spacing_sigmas("trailing", model_sigmas, 7), schedule.trailing_sigmas(model_sigmas, 7))
    assert torch.equal(
        schedule.spacing_sigmas("exponential", model_sigmas, 7), schedule.exponential_sigmas(model_sigmas, 7)
    )
    with pytest.raises(ValueError, match="spacing must be one of trailing, exponential"):
        schedule.spacing_sigmas("karras", model_sigmas, 7)
