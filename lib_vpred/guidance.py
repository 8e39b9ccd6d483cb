"""Classifier-free guidance rescale (Algorithm 2 of arXiv 2305.08891) and the v <-> x0 / eps conversions it needs.

The paper rescales "the model outputs" of a v-prediction model, i.e. it works in **v space** (Sec. 3.4). Samplers in
the WebUI hand us other spaces: the k-diffusion family combines denoised (x0) predictions, the timestep family
(DDIM/PLMS/UniPC) combines eps predictions. Rescaling those directly is a different operator (in x0 space the std
ratio tends to 1 at low noise and the rescale fades away), so each entry point converts to v, rescales, and converts
back. All maths runs in float32 at least; results are returned in the input dtype.

Conventions:
- k-diffusion (variance exploding, sigma_data = 1): ``x = x0 + sigma * eps``; a VP sample is ``x / sqrt(1 + sigma^2)``.
- VP / timestep form: ``x_t = sqrt(abar) * x0 + sqrt(1 - abar) * eps``; ``v = sqrt(abar) * eps - sqrt(1 - abar) * x0``
  (paper Eq. 11).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: Per-image list of ``(row_index, weight)`` pairs, one per ``AND`` sub-prompt, as the WebUI's
#: ``prompt_parser.reconstruct_multicond_batch`` returns it (``conds_list``).
CondsList = Sequence[Sequence[tuple[int, float]]]


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _per_sample(value: torch.Tensor | float, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Broadcast a scalar or a ``[B]`` tensor (sigma, alpha-bar) to ``[B, 1, 1, ...]`` for a ``[B, ...]`` tensor."""
    v = torch.as_tensor(value, device=like.device, dtype=dtype)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape[0], *([1] * (like.ndim - 1)))


def std_per_sample(x: torch.Tensor) -> torch.Tensor:
    """Unbiased standard deviation of each sample over all non-batch dims (C, H, W), shaped ``[B, 1, 1, ...]``.

    The statistic of Algorithm 2 (``x.std([1, 2, 3], keepdim=True)``): one scalar per image, not per channel.
    """
    dims = list(range(1, x.ndim))
    return x.std(dim=dims, keepdim=True)


def cfg_rescale(cfg: torch.Tensor, positive: torch.Tensor, phi: float) -> torch.Tensor:
    """Rescale a guided prediction, Algorithm 2 / Eqs. 14-16 of arXiv 2305.08891, in whatever space it is given.

    ``x_rescaled = cfg * std(positive) / std(cfg)``; result ``phi * x_rescaled + (1 - phi) * cfg``. The std is taken per
    sample over all non-batch dims. ``phi == 0`` returns ``cfg`` itself (plain CFG, bit for bit). A sample whose
    guided prediction is constant (std 0) is left unchanged instead of being divided by zero.
    """
    if phi == 0:
        return cfg
    dtype = _compute_dtype(cfg, positive)
    c = cfg.to(dtype)
    ratio = _std_ratio(positive.to(dtype), c)
    return (c * (phi * ratio + (1.0 - phi))).to(cfg.dtype)


def _std_ratio(positive: torch.Tensor, cfg: torch.Tensor) -> torch.Tensor:
    std_pos = std_per_sample(positive)
    std_cfg = std_per_sample(cfg)
    safe = std_cfg > 0
    return torch.where(safe, std_pos / torch.where(safe, std_cfg, torch.ones_like(std_cfg)), torch.ones_like(std_cfg))


# --- k-diffusion (denoised / x0) form -------------------------------------------------------------------------------


def v_from_denoised(x: torch.Tensor, sigma: torch.Tensor | float, denoised: torch.Tensor) -> torch.Tensor:
    """The v target implied by a k-diffusion denoised prediction: ``v = (x / (sigma^2 + 1) - D) * sqrt(sigma^2 + 1) / sigma``.

    Inverse of ``k_diffusion.external.CompVisVDenoiser`` (``D = c_skip * x + c_out * v`` with
    ``c_skip = 1 / (sigma^2 + 1)``, ``c_out = -sigma / sqrt(sigma^2 + 1)``); paper Eq. 11 in VE coordinates.
    Undefined at sigma = 0.
    """
    dtype = _compute_dtype(x, denoised)
    s = _per_sample(sigma, x, dtype)
    s2p1 = s * s + 1.0
    return ((x.to(dtype) / s2p1 - denoised.to(dtype)) * s2p1.sqrt() / s).to(denoised.dtype)


def denoised_from_v(x: torch.Tensor, sigma: torch.Tensor | float, v: torch.Tensor) -> torch.Tensor:
    """k-diffusion denoised prediction from v: ``D = x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1)`` (paper Eq. 19)."""
    dtype = _compute_dtype(x, v)
    s = _per_sample(sigma, x, dtype)
    s2p1 = s * s + 1.0
    return (x.to(dtype) / s2p1 - v.to(dtype) * s / s2p1.sqrt()).to(v.dtype)


def rescale_denoised(
    x: torch.Tensor,
    sigma: torch.Tensor | float,
    positive_denoised: torch.Tensor,
    cfg_denoised: torch.Tensor,
    phi: float,
) -> torch.Tensor:
    """CFG rescale (Algorithm 2) done in **v space** for k-diffusion denoised predictions; returns denoised.

    With ``s = sigma^2 + 1`` and ``v(D) = (x/s - D) * sqrt(s) / sigma``, the std ratio ``r = std(v_pos) / std(v_cfg)``
    does not depend on the factor ``sqrt(s) / sigma``, and ``v_final = (phi * r + 1 - phi) * v_cfg`` maps back to
    ``D_final = D_cfg - phi * (r - 1) * (x/s - D_cfg)``. This form never divides by sigma, so it is exact from
    sigma ~ 0.03 to the ZTSNR sigma_max ~ 4518.8. ``x`` is the noisy input of each image (``[B, C, H, W]``) and
    ``sigma`` a scalar or ``[B]``. Computed in float32 at least, returned in ``cfg_denoised.dtype``. ``phi == 0``
    returns ``cfg_denoised`` itself.
    """
    if phi == 0:
        return cfg_denoised
    dtype = _compute_dtype(x, positive_denoised, cfg_denoised)
    s = _per_sample(sigma, x, dtype)
    x_vp = x.to(dtype) / (s * s + 1.0)
    d_cfg = cfg_denoised.to(dtype)
    towards_x_cfg = x_vp - d_cfg  # proportional to v_cfg
    ratio = _std_ratio(x_vp - positive_denoised.to(dtype), towards_x_cfg)
    return (d_cfg - phi * (ratio - 1.0) * towards_x_cfg).to(cfg_denoised.dtype)


# --- VP / timestep (eps) form ---------------------------------------------------------------------------------------


def v_from_eps(x_t: torch.Tensor, alpha_bar: torch.Tensor | float, eps: torch.Tensor) -> torch.Tensor:
    """``v = (eps - sqrt(1 - abar) * x_t) / sqrt(abar)``, from Eq. 11 with ``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``.

    Divides by sqrt(abar): do not use it where abar ~ 0 (paper Sec. 6); :func:`rescale_eps` avoids the division.
    """
    dtype = _compute_dtype(x_t, eps)
    a = _per_sample(alpha_bar, x_t, dtype)
    return ((eps.to(dtype) - (1.0 - a).sqrt() * x_t.to(dtype)) / a.sqrt()).to(eps.dtype)


def eps_from_v(x_t: torch.Tensor, alpha_bar: torch.Tensor | float, v: torch.Tensor) -> torch.Tensor:
    """``eps = sqrt(abar) * v + sqrt(1 - abar) * x_t`` (paper Eq. 17)."""
    dtype = _compute_dtype(x_t, v)
    a = _per_sample(alpha_bar, x_t, dtype)
    return (a.sqrt() * v.to(dtype) + (1.0 - a).sqrt() * x_t.to(dtype)).to(v.dtype)


def x0_from_v(x_t: torch.Tensor, alpha_bar: torch.Tensor | float, v: torch.Tensor) -> torch.Tensor:
    """``x0 = sqrt(abar) * x_t - sqrt(1 - abar) * v`` (paper Eq. 19): exact at abar = 0, unlike the eps route."""
    dtype = _compute_dtype(x_t, v)
    a = _per_sample(alpha_bar, x_t, dtype)
    return (a.sqrt() * x_t.to(dtype) - (1.0 - a).sqrt() * v.to(dtype)).to(v.dtype)


def rescale_eps(
    x_t: torch.Tensor,
    alpha_bar: torch.Tensor | float,
    positive_eps: torch.Tensor,
    cfg_eps: torch.Tensor,
    phi: float,
) -> torch.Tensor:
    """CFG rescale (Algorithm 2) in **v space** for eps predictions of timestep samplers; returns eps.

    ``v = (eps - sqrt(1 - abar) x_t) / sqrt(abar)``, so ``r = std(v_pos) / std(v_cfg)`` is the ratio of the stds of
    ``eps - sqrt(1 - abar) x_t``, and ``eps_final = eps_cfg + phi * (r - 1) * (eps_cfg - sqrt(1 - abar) x_t)``. No
    division by sqrt(abar). ``alpha_bar`` is the sampler's alpha-bar at the current timestep (scalar or ``[B]``).
    """
    if phi == 0:
        return cfg_eps
    dtype = _compute_dtype(x_t, positive_eps, cfg_eps)
    a = _per_sample(alpha_bar, x_t, dtype)
    noise_part = (1.0 - a).sqrt() * x_t.to(dtype)
    e_cfg = cfg_eps.to(dtype)
    towards_v_cfg = e_cfg - noise_part  # proportional to v_cfg
    ratio = _std_ratio(positive_eps.to(dtype) - noise_part, towards_v_cfg)
    return (e_cfg + phi * (ratio - 1.0) * towards_v_cfg).to(cfg_eps.dtype)


# --- combining the WebUI's batch layout -------------------------------------------------------------------------------


def combine_conds(x_out: torch.Tensor, conds_list: CondsList, uncond: torch.Tensor, cond_scale: float) -> torch.Tensor:
    """``uncond_i + cond_scale * sum_k w_k (cond_k - uncond_i)`` per image (the WebUI's ``combine_denoised``).

    ``x_out`` holds every cond row (indexed by ``conds_list``), ``uncond`` one row per image. With ``cond_scale = 1``
    this is the *positive* prediction of an image whose prompt has ``AND`` parts: with a single sub-prompt of weight 1
    it is that cond row exactly. Computed in float32 at least, returned in ``x_out.dtype``.
    """
    if len(conds_list) != uncond.shape[0]:
        raise ValueError(f"conds_list has {len(conds_list)} images but uncond has {uncond.shape[0]} rows")
    dtype = _compute_dtype(x_out, uncond)
    out = uncond.to(dtype).clone()
    for i, conds in enumerate(conds_list):
        if len(conds) == 1 and conds[0][1] * cond_scale == 1:
            # uncond + 1 * (cond - uncond) is the cond row itself: take it exactly, not to rounding error.
            out[i] = x_out[conds[0][0]].to(dtype)
            continue
        for cond_index, weight in conds:
            out[i] += (x_out[cond_index].to(dtype) - uncond[i].to(dtype)) * (weight * cond_scale)
    return out.to(x_out.dtype)


def positive_prediction(x_out: torch.Tensor, conds_list: CondsList, uncond: torch.Tensor) -> torch.Tensor:
    """The positive (conditional) prediction per image: :func:`combine_conds` at scale 1 (handles ``AND`` prompts)."""
    return combine_conds(x_out, conds_list, uncond, 1.0)
