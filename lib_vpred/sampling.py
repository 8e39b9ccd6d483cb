"""Sampler adjustments for zero-terminal-SNR schedules (pure: torch only).

Heun's method averages the slope at the start of a step with the slope at its end. Under ZTSNR the first step goes
from sigma_max ~ 4518.8 down to sigma_1 ~ 18 (20 trailing steps), so the end slope is taken at a point the Euler
predictor placed with an error of order sigma_1, and the average multiplies that error by (sigma_0 - sigma_1) / 2:
on an exact denoiser the generated brightness variance is ~2000x the data's at 10 steps (bench/bench_fidelity.py).
Taking that single first step with Euler, which only needs the denoiser at sigma_max (where the ideal prediction is
the data mean, paper Sec. 5.2), and Heun for the rest removes the blow-up and keeps Heun's order everywhere else.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from lib_vpred.schedule import ZERO_SNR_SIGMA_THRESHOLD


def with_euler_first_step(sample_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Wrap a k-diffusion sampler ``fn(model, x, sigmas, extra_args=None, callback=None, disable=None, **kw)`` so that
    the step down from a ZTSNR sigma_max is an Euler step (k-diffusion ``sample_euler`` with no churn); the rest of
    the schedule runs through ``sample_fn`` unchanged. Any other schedule is passed through untouched.

    ``functools.wraps`` keeps the wrapped signature visible to ``inspect.signature``, which the WebUI uses to decide
    which keyword arguments (``sigmas``, ``s_churn``, ...) to pass.
    """

    @functools.wraps(sample_fn)
    def sample(model: Any, x: torch.Tensor, sigmas: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if len(sigmas) < 3 or float(sigmas[0]) <= ZERO_SNR_SIGMA_THRESHOLD or args:
            return sample_fn(model, x, sigmas, *args, **kwargs)
        extra_args = kwargs.get("extra_args") or {}
        callback = kwargs.get("callback")
        s_in = x.new_ones([x.shape[0]])
        sigma, sigma_next = sigmas[0], sigmas[1]
        denoised = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": 0, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        x = x + (x - denoised) / sigma * (sigma_next - sigma)  # Euler: d = (x - D) / sigma (k-diffusion to_d)
        if callback is not None:
            kwargs["callback"] = lambda info: callback({**info, "i": info["i"] + 1})
        return sample_fn(model, x, sigmas[1:], **kwargs)

    return sample
