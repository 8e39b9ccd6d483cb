"""Noise-schedule maths: zero terminal SNR (Algorithm 1) and timestep spacing (Table 2).

Lin, Liu, Li, Yang, "Common Diffusion Noise Schedules and Sample Steps are Flawed", arXiv 2305.08891 (WACV 2024).
All schedule arithmetic is done in float64 whatever the input dtype, then cast once at the boundary.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Literal

import torch

logger = logging.getLogger("vpred")

#: Terminal alpha-bar kept finite after the ZTSNR rescale, so that sigma_T = sqrt((1 - a)/a) ~ 4518.76 instead of inf.
#: Provenance: ComfyUI ``comfy/model_sampling.py`` (``rescale_zero_terminal_snr_sigmas``), copied by A1111
#: ``modules/sd_models.py:643`` (v1.10.1), Forge and reForge. diffusers uses 2**-24 (sigma_T ~ 4096) instead.
ZTSNR_TERMINAL_ALPHA_BAR = 4.8973451890853435e-08

#: Below this terminal alpha-bar a table is treated as already zero-terminal-SNR (SNR_T = a/(1-a) < 1e-6).
#: Stock SD has alpha_bar_T = 4.66e-3 (SNR_T = 4.68e-3, paper Table 1); a ZTSNR table has 0 or ``ZTSNR_TERMINAL_ALPHA_BAR``.
ZERO_SNR_THRESHOLD = 1e-6

#: The same threshold as a k-diffusion sigma: sigma_T = sqrt((1 - a)/a) above this means alpha_bar_T < the threshold.
ZERO_SNR_SIGMA_THRESHOLD = (1.0 / ZERO_SNR_THRESHOLD - 1.0) ** 0.5

#: Number of training timesteps of every SD1/SD2/SDXL checkpoint (LDM ``timesteps: 1000``).
NUM_TRAIN_TIMESTEPS = 1000

#: SD1/SD2/SDXL training betas: "scaled_linear" from 0.00085 to 0.012 (LDM ``linear_start``/``linear_end``).
SD_LINEAR_START = 0.00085
SD_LINEAR_END = 0.012

Spacing = Literal["leading", "linspace", "trailing"]
SPACINGS: tuple[str, ...] = ("leading", "linspace", "trailing")


def scaled_linear_alphas_cumprod(
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    beta_start: float = SD_LINEAR_START,
    beta_end: float = SD_LINEAR_END,
) -> torch.Tensor:
    """Alpha-bar of the Stable Diffusion "scaled linear" schedule: betas linear in sqrt space (LDM ``make_beta_schedule``).

    Returned in float64 on the CPU, ascending in t (index 0 is the least noisy step).
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """k-diffusion noise levels sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) (VE form of a VP schedule).

    Computed in float64, returned in the input's dtype (float32 at least) on the input's device.
    """
    a = alphas_cumprod.to(torch.float64)
    out_dtype = torch.promote_types(alphas_cumprod.dtype, torch.float32)
    return ((1.0 - a) / a).sqrt().to(out_dtype)


def alphas_cumprod_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`sigmas_from_alphas_cumprod`: alpha_bar = 1 / (1 + sigma^2)."""
    s = sigmas.to(torch.float64)
    out_dtype = torch.promote_types(sigmas.dtype, torch.float32)
    return (1.0 / (1.0 + s * s)).to(out_dtype)


def _check_table(alphas_cumprod: torch.Tensor) -> None:
    if alphas_cumprod.ndim != 1 or alphas_cumprod.numel() < 2:
        raise ValueError(
            f"alphas_cumprod must be a 1-D table with at least 2 entries, got shape {tuple(alphas_cumprod.shape)}"
        )


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Rescale a schedule to zero terminal SNR, Algorithm 1 of arXiv 2305.08891 (in sqrt(alpha_bar) space).

    ``s_t = sqrt(abar_t)``; ``s'_t = (s_t - s_T) * s_1 / (s_1 - s_T)``; ``abar'_t = s'_t ** 2``. The first entry is
    unchanged and the last is exactly 0 (SNR_T = 0, sigma_T = inf): use :func:`ztsnr_alphas_cumprod` for a table that
    samplers can use. Always computed and returned in float64 (fp16 or bf16 input is upcast first), on the input's
    device.
    """
    _check_table(alphas_cumprod)
    s = alphas_cumprod.to(torch.float64).sqrt()
    s_first, s_last = s[0].clone(), s[-1].clone()
    if not s_first > s_last:
        raise ValueError("alphas_cumprod must decrease from the first to the last timestep")
    # Shift so the last timestep is zero, then scale so the first timestep is back to its old value.
    s = (s - s_last) * (s_first / (s_first - s_last))
    out = s * s
    out[0] = alphas_cumprod[0].to(torch.float64)  # exact, not merely to rounding error
    out[-1] = 0.0
    return out


def is_zero_terminal_snr(alphas_cumprod: torch.Tensor, threshold: float = ZERO_SNR_THRESHOLD) -> bool:
    """True when the table's terminal SNR is already (numerically) zero: alpha_bar_T < ``threshold``."""
    return bool(alphas_cumprod[-1].to(torch.float64) < threshold)


def ztsnr_alphas_cumprod(
    alphas_cumprod: torch.Tensor,
    terminal: float = ZTSNR_TERMINAL_ALPHA_BAR,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The zero-terminal-SNR alpha-bar table samplers use: Algorithm 1, then the last entry clamped to ``terminal``.

    With the default clamp sigma_max = sqrt((1 - terminal)/terminal) ~ 4518.76, as in the WebUI and ComfyUI.
    Idempotent: a table that is already ZTSNR (see :func:`is_zero_terminal_snr`) is not rescaled again, only its
    last entry is made finite if it was exactly 0; this is logged instead of compounding the rescale.
    Maths in float64; the result is cast to ``dtype`` (float32 by default) on the input's device.
    """
    if not 0.0 < terminal < ZERO_SNR_THRESHOLD:
        raise ValueError(f"terminal alpha_bar must be in (0, {ZERO_SNR_THRESHOLD}), got {terminal!r}")
    _check_table(alphas_cumprod)
    if is_zero_terminal_snr(alphas_cumprod):
        logger.info(
            "alphas_cumprod is already zero-terminal-SNR (alpha_bar_T=%.3g); not rescaled again",
            float(alphas_cumprod[-1]),
        )
        out = alphas_cumprod.to(torch.float64).clone()
        if out[-1] <= 0.0:
            out[-1] = terminal
        return out.to(dtype)
    out = rescale_zero_terminal_snr(alphas_cumprod)
    out[-1] = terminal
    return out.to(dtype)


def spaced_timesteps(steps: int, spacing: Spacing, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """Descending, 0-based integer timesteps for ``steps`` sampling steps (paper Table 2, diffusers ``timestep_spacing``).

    - ``"leading"``:  ``arange(0, steps) * (T // steps)`` (DDIM/PNDM; never reaches T - 1);
    - ``"linspace"``: ``round(linspace(0, T - 1, steps))`` (iDDPM);
    - ``"trailing"``: ``round(arange(T, 0, -T / steps)) - 1`` (DPM-Solver; always starts at T - 1).

    Rounding is half-to-even on float64 values, exactly as diffusers' numpy code. Returns an int64 tensor of length
    ``steps`` on the CPU.
    """
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be a positive int, got {num_train_timesteps!r}")
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be between 1 and {num_train_timesteps}, got {steps}")
    t_count = num_train_timesteps
    i = torch.arange(steps, dtype=torch.float64)
    if spacing == "leading":
        ts = i * (t_count // steps)
    elif spacing == "linspace":
        # numpy's linspace: start + i * (stop - start) / (num - 1), with the endpoint set exactly.
        ts = i * ((t_count - 1) / (steps - 1)) if steps > 1 else i
        ts[-1] = t_count - 1 if steps > 1 else 0
    elif spacing == "trailing":
        # Same float64 arithmetic as numpy's arange(T, 0, -T/steps), which fills start + i * delta with
        # delta = (start + step) - start, i.e. the step as rounded at the scale of T.
        delta = (t_count + (-t_count / steps)) - t_count
        ts = (t_count + i * delta).round() - 1
        return ts.to(torch.int64)
    else:
        raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}; got {spacing!r}")
    return ts.round().to(torch.int64).flip(0)


def trailing_sigmas(model_sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """k-diffusion sigma list for ``steps`` steps at the trailing timesteps of a model's ascending sigma table.

    ``model_sigmas`` is the denoiser's 1000-entry table (``model_wrap.sigmas``, index = timestep). The result is
    descending with ``steps + 1`` entries: ``model_sigmas[t]`` for the trailing timesteps (the first is the table's
    last entry, t = T - 1), then 0. Same device and dtype as ``model_sigmas``.
    """
    t = spaced_timesteps(steps, "trailing", num_train_timesteps=model_sigmas.shape[0]).to(model_sigmas.device)
    return torch.cat([model_sigmas[t], model_sigmas.new_zeros(1)])


def exponential_sigmas(model_sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """k-diffusion sigma list for ``steps`` steps evenly spaced in log sigma, from the table's largest sigma down to its
    smallest, then 0: the WebUI's "Exponential" schedule type (k-diffusion ``get_sigmas_exponential(n, sigma_min,
    sigma_max)`` called with the model's own range, A1111 v1.10.1 ``modules/sd_samplers_kdiffusion.py:93``).

    Under ZTSNR it starts at sigma_max ~ 4518.76 (t = T - 1, like trailing) and ends at sigma_min ~ 0.029, where
    trailing ends at the sigma of t = T/steps - 1 (0.231 at 20 steps): the measured better choice for some multistep
    samplers (README "Benchmarks"). Computed as the WebUI computes that schedule type (the float32 table's ends as
    Python floats, a float32 ``linspace`` of their logs), so that ``Timestep spacing: Auto`` giving exponential and
    ``Schedule type: Exponential`` on the same table are the same sigmas bit for bit (the rounding is ~1e-6 relative).
    The result has ``steps + 1`` entries, on ``model_sigmas``'s device and dtype.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    sigma_min, sigma_max = float(model_sigmas.detach().min()), float(model_sigmas.detach().max())
    if not 0.0 < sigma_min <= sigma_max or not math.isfinite(sigma_max):
        raise ValueError(f"model sigmas must be positive and finite, got range [{sigma_min}, {sigma_max}]")
    log_sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float32)
    sigmas = torch.cat([log_sigmas.exp(), log_sigmas.new_zeros(1)])
    return sigmas.to(device=model_sigmas.device, dtype=model_sigmas.dtype)


#: Our sigma schedules by the plan's spacing name (``lib_vpred.plan.TRAILING`` / ``EXPONENTIAL``).
SPACING_SIGMAS = {"trailing": trailing_sigmas, "exponential": exponential_sigmas}


def spacing_function(spacing: str) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The sigma-list function of one of our spacings (:data:`SPACING_SIGMAS`); ValueError naming the choices else."""
    try:
        return SPACING_SIGMAS[spacing]
    except KeyError:
        raise ValueError(f"spacing must be one of {', '.join(SPACING_SIGMAS)}, got {spacing!r}") from None


def spacing_sigmas(spacing: str, model_sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """The sigma list of one of our spacings (:data:`SPACING_SIGMAS`) for ``steps`` steps of ``model_sigmas``."""
    return spacing_function(spacing)(model_sigmas, steps)
