"""A1111 glue for the timestep samplers (DDIM, DDIM CFG++, PLMS, UniPC; ``CompVisSampler``).

Everything is installed on the pass's own sampler object in ``process_before_every_sampling`` and dies with it:

- ``sampler.sample`` / ``sampler.sample_img2img`` wrappers put the ZTSNR alpha-bar table on the model object for
  exactly the duration of the call (the loop, the img2img noising at ``alphas_cumprod[timesteps[t_enc]]``, the
  v -> eps conversion and ``model_wrap_cfg.alphas`` for previews) and restore it in ``finally`` onto the *same*
  model object (after a refiner switch ``shared.sd_model`` is another model);
- ``sampler.get_timesteps`` (trailing): the list from :func:`lib_vpred.timestep.trailing_timesteps`, and inside
  img2img the list whose entry ``t_enc`` is the level of the first call;
- ``sampler.func``: for v models our exact v-form loop (:mod:`lib_vpred.timestep`), for eps models the WebUI's own
  loop; in img2img with trailing, the loop gets :func:`lib_vpred.timestep.img2img_schedule` (``t_enc + 1`` calls);
- v models: ``model_wrap`` returns v (not eps), so CFG combines in v (CFG is affine with weights summing to 1, so it
  commutes with the eps <-> v map) and ``get_pred_x0`` (previews, interrupt result) is Eq. 19;
- CFG rescale: in v directly (v models), or in eps <-> v with alpha-bar at t (eps models, :func:`guidance.rescale_eps`).

An eps checkpoint with an inactive plan never reaches this module: the WebUI's code runs unchanged, bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import types
from typing import Any

import torch

from lib_vpred import guidance, timestep
from lib_vpred.plan import Plan
from lib_vpred.webui import common

logger = logging.getLogger("vpred")

ATTR_STATE = "_vpred_timestep"  # on the sampler: this pass's TimestepState
ATTR_RETURNS_V = "_vpred_returns_v"  # on our model wrapper


@dataclasses.dataclass
class TimestepState:
    plan: Plan
    kind: str
    model: Any  # the model object whose alphas_cumprod we swap (and restore onto)
    table: torch.Tensor | None  # the ZTSNR table to install during sampling, or None
    v_path: bool
    img2img: bool = False
    grid: torch.Tensor | None = None
    captured: tuple[torch.Tensor, torch.Tensor] | None = None
    #: A host whose denoiser does not answer in the WebUI's timestep form (Forge) gives v its own way:
    #: ``predict_v(model, x, t, abar, extra_args) -> v`` and ``uncond_v(model, x, abar) -> v`` (DDIM CFG++ direction).
    predict_v: Any = None
    uncond_v: Any = None


def ztsnr_alphas_table(sd_model: Any) -> torch.Tensor:
    """The model's ZTSNR alpha-bar (``common.ztsnr_alphas``), cast to float32 on the current table's device."""
    return common.ztsnr_alphas(sd_model).to(device=sd_model.alphas_cumprod.device, dtype=torch.float32)


class VDenoiser(torch.nn.Module):
    """The timestep family's inner model for v checkpoints, returning **v** (the WebUI's converts v to eps)."""

    def __init__(self, sd_model: Any) -> None:
        super().__init__()
        self.inner_model = sd_model
        setattr(self, ATTR_RETURNS_V, True)

    def forward(self, input: torch.Tensor, timesteps: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.inner_model.apply_model(input, timesteps, **kwargs)


def _abar_at(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    a = table.to(like.device, torch.float64)[t.to(like.device).to(torch.int64)]
    return a.reshape(-1, *([1] * (like.ndim - 1)))


def pred_x0_v(cfg: Any, state: TimestepState, x_in: torch.Tensor, x_out: torch.Tensor, sigma: Any) -> torch.Tensor:
    """``get_pred_x0`` for v outputs: ``x0 = sqrt(abar) x - sqrt(1 - abar) v`` (Eq. 19) at the timestep ``sigma``."""
    a = _abar_at(state.model.alphas_cumprod, torch.as_tensor(sigma), x_in)
    return (a.sqrt() * x_in.to(torch.float64) - (1 - a).sqrt() * x_out.to(torch.float64)).to(x_out.dtype)


# --- the sampling-call scope ------------------------------------------------------------------------------------------


def _scoped_call(sampler: Any, original: Any, img2img: bool, *args: Any, **kwargs: Any) -> Any:
    state: TimestepState = getattr(sampler, ATTR_STATE)
    model = state.model
    cfg = sampler.model_wrap_cfg
    saved_model_table = model.alphas_cumprod
    saved_cfg_table = getattr(cfg, "alphas", None)
    state.img2img = img2img
    try:
        if state.table is not None:
            model.alphas_cumprod = state.table
            cfg.alphas = state.table
        return original(*args, **kwargs)
    finally:
        model.alphas_cumprod = saved_model_table
        cfg.alphas = saved_cfg_table
        state.img2img = False


def get_trailing_timesteps(sampler: Any, p: Any, steps: int) -> torch.Tensor:
    state: TimestepState = getattr(sampler, ATTR_STATE)
    grid = timestep.trailing_timesteps(int(steps), state.kind)
    state.grid = grid
    out = timestep.img2img_get_timesteps(grid, state.kind) if state.img2img else grid
    return out.to(state.model.alphas_cumprod.device)


# --- the loop ---------------------------------------------------------------------------------------------------------


def _to_v(cfg: Any, out: torch.Tensor, x: torch.Tensor, abar: float) -> torch.Tensor:
    """``out`` as v. After a refiner switch the WebUI rebuilds its own (eps) inner model: convert, with our table."""
    if getattr(cfg.model_wrap, ATTR_RETURNS_V, False):
        return out
    return guidance.v_from_eps(x, abar, out)


def _v_loop(sampler: Any, state: TimestepState, model: Any, x: torch.Tensor, timesteps: Any, **kw: Any) -> Any:
    """Our loop for v checkpoints, called with the WebUI's loop arguments."""
    extra_args = kw.get("extra_args") or {}
    callback = kw.get("callback")
    table = state.model.alphas_cumprod
    abar = table.detach().to("cpu", torch.float64)
    s_in = x.new_ones(x.shape[0])

    def v_at(xx: torch.Tensor, t: Any, a: float) -> torch.Tensor:
        if state.predict_v is not None:
            return state.predict_v(model, xx, t, a, extra_args)
        return _to_v(model, model(xx, t * s_in, **extra_args), xx, a)

    def report(i: int, xx: torch.Tensor, x0: torch.Tensor) -> None:
        if callback is not None:
            callback({"x": xx, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": x0})

    if state.kind == timestep.UNIPC:
        from modules import shared

        opts = shared.opts

        def model_v(xx: torch.Tensor, t_input: float) -> torch.Tensor:
            return v_at(xx, t_input, float(abar[int(t_input)]))

        t_start = None
        if kw.get("is_img2img"):
            t_start = float(timesteps[-1]) / 1000 + 1 / 1000
        return timestep.unipc_sample_v(
            model_v,
            x,
            len(timesteps),
            table,
            t_start=t_start,
            order=int(getattr(opts, "uni_pc_order", 3)),
            skip_type=getattr(opts, "uni_pc_skip_type", "time_uniform"),
            variant=getattr(opts, "uni_pc_variant", "bh1"),
            lower_order_final=bool(getattr(opts, "uni_pc_lower_order_final", True)),
            callback=report,
        )

    cfgpp = state.kind == timestep.DDIM_CFGPP
    if cfgpp:
        model.cond_scale_miltiplier = 1 / 12.5
        model.need_last_noise_uncond = True

    def model_pair(xx: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = float(abar[t])
        v = v_at(xx, t, a)
        if cfgpp:
            if state.uncond_v is not None:
                return v, state.uncond_v(model, xx, a)
            return v, _to_v(model, model.last_noise_uncond, xx, a)
        return v, v

    ts = torch.as_tensor(timesteps).detach().cpu()
    if state.kind == timestep.PLMS:
        return timestep.plms_sample_v(model_pair, x, ts, table, callback=report)
    return timestep.ddim_sample_v(model_pair, x, ts, table, eta=float(kw.get("eta", 0.0) or 0.0), callback=report)


def make_func(sampler: Any, state: TimestepState, original: Any) -> Any:
    """``sampler.func``: the WebUI's loop signature (``initialize`` and ``sample*`` inspect it), our timesteps for
    img2img with trailing, and our v loop for v checkpoints."""

    @functools.wraps(original)
    def func(model: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if args:
            kwargs["timesteps"], args = args[0], args[1:]
        timesteps = kwargs.get("timesteps")
        if state.img2img and state.grid is not None and timesteps is not None:
            kwargs["timesteps"] = timestep.img2img_schedule(state.grid, state.kind, len(timesteps)).to(
                torch.as_tensor(timesteps).device
            )
        if state.v_path:
            kw = dict(kwargs)
            ts = kw.pop("timesteps")
            return _v_loop(sampler, state, model, x, ts, **kw)
        return original(model, x, *args, **kwargs)

    return func


# --- CFG rescale ------------------------------------------------------------------------------------------------------


def _capture_inputs(state: TimestepState, forward: Any, x_in: torch.Tensor, sigma_in: torch.Tensor, **kw: Any) -> Any:
    state.captured = (x_in, sigma_in)
    return forward(x_in, sigma_in, **kw)


def combine_rescaled(
    cfg: Any, state: TimestepState, original: Any, x_out: torch.Tensor, conds_list: Any, uncond: Any, cond_scale: float
) -> torch.Tensor:
    """The WebUI's ``combine_denoised``, then CFG rescale in v: directly when the outputs are v, else via eps <-> v
    with alpha-bar at t (:func:`guidance.rescale_eps`, no division by sqrt(abar))."""
    combined = original(x_out, conds_list, uncond, cond_scale)
    phi = state.plan.cfg_rescale
    if phi <= 0:
        return combined
    batch = uncond.shape[0]
    positive = guidance.positive_prediction(x_out, conds_list, x_out[-batch:])
    if getattr(cfg.model_wrap, ATTR_RETURNS_V, False):
        return guidance.cfg_rescale(combined, positive, phi)
    if state.captured is None:
        return combined
    x, sigma = state.captured[0][-batch:], state.captured[1][-batch:]
    if x.shape != combined.shape:
        return combined  # a layout this version does not know (skip-uncond steps are a no-op anyway)
    # alpha-bar at each image's timestep, gathered on the device in the table's own dtype (rescale_eps upcasts the
    # [B] values to float32); the whole table is not converted on every step
    table = state.model.alphas_cumprod.to(x.device)
    a = table.index_select(0, sigma.to(device=x.device, dtype=torch.int64))
    return guidance.rescale_eps(x, a, positive, combined, phi)


# --- entry point ------------------------------------------------------------------------------------------------------


def apply(p: Any, plan: Plan, sd_model: Any, opts: Any) -> bool:
    """Install the plan on ``p.sampler`` (a ``CompVisSampler``). False (nothing changed) for an unknown loop."""
    sampler = p.sampler
    config = getattr(sampler, "config", None)
    kind = timestep.kind_of(getattr(config, "name", None)) or timestep.kind_of(getattr(sampler, "funcname", None))
    if kind is None:
        kind = timestep.kind_of(getattr(sampler, "func", None))
    if kind is None:
        logger.warning("timestep sampler %r not recognised: left unchanged", getattr(config, "name", sampler))
        return False
    if getattr(sampler, ATTR_STATE, None) is not None:
        return True  # already installed on this sampler (e.g. a second call in the same pass)
    cfg = sampler.model_wrap_cfg
    v_path = plan.prediction == "v"
    if v_path and kind == timestep.UNIPC and getattr(opts, "uni_pc_variant", "bh1") not in ("bh1", "bh2"):
        v_path = False  # vary_coeff: keep the WebUI's UniPC on the eps route
    table = ztsnr_alphas_table(sd_model) if plan.install_ztsnr_table else None
    state = TimestepState(plan=plan, kind=kind, model=sd_model, table=table, v_path=v_path)
    setattr(sampler, ATTR_STATE, state)

    from modules import sd_samplers_timesteps

    if v_path:
        wrapper: Any = VDenoiser(sd_model)
        cfg.get_pred_x0 = functools.partial(pred_x0_v, cfg, state)
    elif plan.prediction == "v":
        wrapper = sd_samplers_timesteps.CompVisTimestepsVDenoiser(sd_model)  # UniPC vary_coeff, eps route
    else:
        wrapper = sd_samplers_timesteps.CompVisTimestepsDenoiser(sd_model)
    if v_path or plan.override_prediction is not None:
        cfg.model_wrap = wrapper
        sampler.model_wrap = wrapper

    # the bound methods as they are now (another extension may have wrapped them already)
    sampler.sample = functools.partial(_scoped_call, sampler, sampler.sample, False)
    sampler.sample_img2img = functools.partial(_scoped_call, sampler, sampler.sample_img2img, True)
    if plan.trailing:
        sampler.get_timesteps = types.MethodType(get_trailing_timesteps, sampler)
    if plan.trailing or v_path:
        sampler.func = make_func(sampler, state, sampler.func)
    if plan.cfg_rescale > 0:
        if not v_path:
            inner = cfg.model_wrap if cfg.model_wrap is not None else cfg.inner_model
            inner.forward = functools.partial(_capture_inputs, state, inner.forward)
        cfg.combine_denoised = functools.partial(combine_rescaled, cfg, state, cfg.combine_denoised)
    return True
