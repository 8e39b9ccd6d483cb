"""Classifier-free guidance rescale (Algorithm 2 of arXiv 2305.08891) and the v <-> x0 / eps conversions it needs.

The paper rescales "the model outputs" of a v-prediction model, i.e. it works in **v space** (Sec. 3.4). Samplers in
the WebUI hand us other spaces: the k-diffusion family combines denoised (x0) predictions, the timestep family
(DDIM/PLMS/UniPC) combines eps predictions. Rescaling those directly is a different operator (in x0 space the std
ratio tends to 1 at low noise and the rescale fades away), so each entry point converts to v, rescales, and converts
back. All maths runs in float32 at least; results are returned in the input dtype.

The rescale runs on every sampling step, on the GPU, where small elementwise kernels cost their launch, not their
arithmetic. So each entry point makes a fixed handful of passes (two fused "prediction minus the noisy input's part"
passes into one float32 ``[2, B, ...]`` buffer, one std reduction over both halves, a few ``[B]``-sized ops and one
fused multiply-add back in the input dtype), reads half-precision inputs directly (accumulating in float32), never
clones, loops over images only for ``AND`` prompts, and never reads a tensor value on the host (no device sync).

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


def _per_sample_column(value: torch.Tensor | float, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A scalar or a ``[B]`` tensor as a ``[B or 1, 1, 1, ...]`` tensor of ``dtype`` on ``like``'s device.

    It has as many dims as ``like``, so it takes part in type promotion as a full tensor: an op between half-precision
    predictions and this float32 column computes in float32. A Python number is filled on the device (no host-to-device
    copy); a tensor already of that device and dtype is only reshaped (a view).
    """
    if isinstance(value, torch.Tensor):
        return value.to(device=like.device, dtype=dtype).reshape(-1, *([1] * (like.ndim - 1)))
    return torch.full((1,) * like.ndim, float(value), dtype=dtype, device=like.device)


def std_per_sample(x: torch.Tensor) -> torch.Tensor:
    """Unbiased standard deviation of each sample over all non-batch dims (C, H, W), shaped ``[B, 1, 1, ...]``.

    The statistic of Algorithm 2 (``x.std([1, 2, 3], keepdim=True)``): one scalar per image, not per channel.
    """
    dims = list(range(1, x.ndim))
    return x.std(dim=dims, keepdim=True)


def std_pair_per_sample(pair: torch.Tensor) -> torch.Tensor:
    """:func:`std_per_sample` of both halves of a ``[2, B, ...]`` tensor in one reduction: ``[2, B, 1, 1, ...]``.

    ``pair[0]`` is the positive prediction and ``pair[1]`` the guided one (Algorithm 2's ``std(x_pos)`` and
    ``std(x_cfg)``); one kernel reads both. torch's std is a Welford/two-pass reduction, not ``E[x^2] - E[x]^2``, so
    it does not lose precision when the mean is large against the spread.
    """
    return pair.std(dim=tuple(range(2, pair.ndim)), keepdim=True)


def rescale_gain(std_pos: torch.Tensor, std_cfg: torch.Tensor) -> torch.Tensor:
    """``std_pos / std_cfg - 1`` per sample (the ratio of Eq. 15 minus one), and 0 where that is not finite.

    Algorithm 2's result ``phi * x_rescaled + (1 - phi) * x_cfg`` is ``x_cfg + phi * gain * x_cfg``; a constant guided
    prediction (``std_cfg = 0``, ratio inf or nan) gets gain 0 and is left unchanged instead of being divided by
    zero. Computed as ``(std_pos - std_cfg) / std_cfg`` (exact near ratio 1) on the ``[B]``-sized stds only.
    """
    return torch.nan_to_num((std_pos - std_cfg) / std_cfg, nan=0.0, posinf=0.0, neginf=0.0)


def _add_rescale(base: torch.Tensor, direction: torch.Tensor, gain: torch.Tensor, phi: float) -> torch.Tensor:
    """``base + phi * gain * direction`` in one pass: computed in the promoted (float32+) dtype, stored in ``base.dtype``."""
    return torch.addcmul(base, direction, gain, value=phi, out=torch.empty_like(base))


def _pair_buffer(like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised ``[2, *like.shape]`` buffer (positive, guided) in the compute dtype, on ``like``'s device."""
    return torch.empty((2, *like.shape), dtype=dtype, device=like.device)


def cfg_rescale(cfg: torch.Tensor, positive: torch.Tensor, phi: float) -> torch.Tensor:
    """Rescale a guided prediction, Algorithm 2 / Eqs. 14-16 of arXiv 2305.08891, in whatever space it is given.

    ``x_rescaled = cfg * std(positive) / std(cfg)``; result ``phi * x_rescaled + (1 - phi) * cfg``, computed as
    ``cfg + phi * (std(positive) / std(cfg) - 1) * cfg`` (:func:`rescale_gain`). The std is taken per sample over all
    non-batch dims. ``phi == 0`` returns ``cfg`` itself (plain CFG, bit for bit). A sample whose guided prediction is
    constant (std 0) is left unchanged instead of being divided by zero.
    """
    if phi == 0:
        return cfg
    dtype = _compute_dtype(cfg, positive)
    if cfg.dtype == dtype and positive.dtype == dtype:
        std_pos, std_cfg = std_per_sample(positive), std_per_sample(cfg)  # read in place: no copy
    else:  # half precision (or mixed): one float32 copy of both, then one reduction over the pair
        pair = _pair_buffer(cfg, dtype)
        pair[0].copy_(positive)
        pair[1].copy_(cfg)
        std_pos, std_cfg = std_pair_per_sample(pair)
    return _add_rescale(cfg, cfg, rescale_gain(std_pos, std_cfg), phi)


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
    ``D_final = D_cfg + phi * (r - 1) * (D_cfg - x/s)``. This form never divides by sigma, so it is exact from
    sigma ~ 0.03 to the ZTSNR sigma_max ~ 4518.8. ``x`` is the noisy input of each image (``[B, C, H, W]``) and
    ``sigma`` a scalar or ``[B]``. Computed in float32 at least, returned in ``cfg_denoised.dtype``. ``phi == 0``
    returns ``cfg_denoised`` itself.
    """
    if phi == 0:
        return cfg_denoised
    dtype = _compute_dtype(x, positive_denoised, cfg_denoised)
    s = _per_sample_column(sigma, x, dtype)
    s2p1 = s.square().add_(1.0)
    # D - x/s = -v * sigma / sqrt(s): v up to a per-sample factor, which neither the ratio nor the result depends on
    pair = _pair_buffer(cfg_denoised, dtype)
    torch.addcdiv(positive_denoised, x, s2p1, value=-1.0, out=pair[0])
    torch.addcdiv(cfg_denoised, x, s2p1, value=-1.0, out=pair[1])
    std_pos, std_cfg = std_pair_per_sample(pair)
    return _add_rescale(cfg_denoised, pair[1], rescale_gain(std_pos, std_cfg), phi)


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
    a = _per_sample_column(alpha_bar, x_t, dtype)
    noise_coef = torch.rsub(a, 1.0).sqrt_()  # sqrt(1 - abar)
    # eps - sqrt(1 - abar) x_t = sqrt(abar) v (Eq. 17): v up to a per-sample factor
    pair = _pair_buffer(cfg_eps, dtype)
    torch.addcmul(positive_eps, x_t, noise_coef, value=-1.0, out=pair[0])
    torch.addcmul(cfg_eps, x_t, noise_coef, value=-1.0, out=pair[1])
    std_pos, std_cfg = std_pair_per_sample(pair)
    return _add_rescale(cfg_eps, pair[1], rescale_gain(std_pos, std_cfg), phi)


# --- combining the WebUI's batch layout -------------------------------------------------------------------------------


def _single_cond_rows(conds_list: CondsList) -> tuple[list[int], float] | None:
    """``(cond row of each image, their common weight)`` when every image has exactly one sub-prompt and all weights
    are equal (the usual batch: no ``AND``); None otherwise. Reads only the Python list, never a tensor."""
    rows: list[int] = []
    weight: float | None = None
    for conds in conds_list:
        if len(conds) != 1:
            return None
        row, w = conds[0]
        if weight is None:
            weight = w
        elif w != weight:
            return None
        rows.append(row)
    return (rows, weight) if weight is not None else None


def _take_rows(x: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``x[rows]`` with no host-to-device index copy: a view when the rows are evenly spaced (the WebUI's layout,
    images in order), else one stacked copy."""
    step = rows[1] - rows[0] if len(rows) > 1 else 1
    if rows[0] >= 0 and step > 0 and rows[-1] < x.shape[0] and rows == list(range(rows[0], rows[-1] + 1, step)):
        return x[rows[0] : rows[-1] + 1 : step]
    return torch.stack([x[r] for r in rows])


def _check_layout(conds_list: CondsList, uncond: torch.Tensor) -> None:
    if len(conds_list) != uncond.shape[0]:
        raise ValueError(f"conds_list has {len(conds_list)} images but uncond has {uncond.shape[0]} rows")


def combine_conds(x_out: torch.Tensor, conds_list: CondsList, uncond: torch.Tensor, cond_scale: float) -> torch.Tensor:
    """``uncond_i + cond_scale * sum_k w_k (cond_k - uncond_i)`` per image (the WebUI's ``combine_denoised``).

    ``x_out`` holds every cond row (indexed by ``conds_list``), ``uncond`` one row per image. With ``cond_scale = 1``
    this is the *positive* prediction of an image whose prompt has ``AND`` parts: with a single sub-prompt of weight 1
    it is that cond row exactly. Computed in float32 at least, returned in ``x_out.dtype`` (a new tensor). When every
    image has one sub-prompt of the same weight, all images are combined at once; a per-image loop only for ``AND``.
    """
    _check_layout(conds_list, uncond)
    dtype = _compute_dtype(x_out, uncond)
    single = _single_cond_rows(conds_list)
    if single is not None:
        rows, weight = single
        cond = _take_rows(x_out, rows)
        if weight * cond_scale == 1:
            return cond.clone()  # uncond + 1 * (cond - uncond) is the cond row itself: exactly, not to rounding error
        u = uncond.to(dtype)
        return (u + (cond.to(dtype) - u) * (weight * cond_scale)).to(x_out.dtype)
    out = uncond.to(dtype).clone()
    for i, conds in enumerate(conds_list):
        if len(conds) == 1 and conds[0][1] * cond_scale == 1:
            out[i] = x_out[conds[0][0]].to(dtype)  # that cond row exactly, as above
            continue
        for cond_index, weight in conds:
            out[i] += (x_out[cond_index].to(dtype) - uncond[i].to(dtype)) * (weight * cond_scale)
    return out.to(x_out.dtype)


def positive_prediction(x_out: torch.Tensor, conds_list: CondsList, uncond: torch.Tensor) -> torch.Tensor:
    """The positive (conditional) prediction per image: :func:`combine_conds` at scale 1 (handles ``AND`` prompts).

    When every image has one sub-prompt of weight 1 (no ``AND``), that is the images' cond rows of ``x_out``
    exactly, returned without a copy (usually a view of ``x_out``, in its dtype): read it, do not modify it in place.
    """
    _check_layout(conds_list, uncond)
    single = _single_cond_rows(conds_list)
    if single is not None and single[1] == 1:
        return _take_rows(x_out, single[0])
    return combine_conds(x_out, conds_list, uncond, 1.0)
