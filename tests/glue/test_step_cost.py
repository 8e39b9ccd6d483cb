"""The glue's per-step path (capture + wrapped combine) for both sampler families: kernel-launching ops within budget,
no host read of a tensor value (CPU profiler and ``meta`` tensors), and the same result as the maths it wraps.

The WebUI's own combine is replaced by a function returning a precomputed result, so only the extension's work is
profiled. Counting method: ``bench/opcount.py``; see ``tests/unit/test_step_cost.py`` for the core functions.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from lib_vpred import guidance
from lib_vpred.plan import Plan
from lib_vpred.webui import hooks, timestep_glue

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from opcount import count_ops

PHI = 0.7
#: Extra kernel-launching ops per step: the core's (9, see tests/unit/test_step_cost.py) plus, for the timestep eps
#: route, the alpha-bar gather (timestep to int64, index_select).
BUDGET = {"kdiffusion": 9, "timestep-eps": 11, "timestep-v": 7}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_case(images: int, dtype: torch.dtype, device: str = "cpu"):
    g = torch.Generator().manual_seed(1)
    shape = (4, 64, 64)
    x = (torch.randn(images, *shape, generator=g) * 3).to(dtype)
    x_out = torch.randn(2 * images, *shape, generator=g).to(dtype)
    conds_list = [[(i, 1.0)] for i in range(images)]
    denoised = (x_out[-images:].float() + 7.0 * (x_out[:images].float() - x_out[-images:].float())).to(dtype)
    sigma = torch.linspace(14.6, 2.5, images)
    timesteps = torch.linspace(999, 501, images)  # what the timestep samplers pass as "sigma": float timesteps
    table = torch.linspace(0.9991, 0.0047, 1000)
    tensors = [t.to(device) for t in (x, x_out, denoised, sigma, timesteps, table)]
    x, x_out, denoised, sigma, timesteps, table = tensors
    text_uncond = torch.zeros(images, 77, 8, device=device)
    return types.SimpleNamespace(
        x=x,
        x_out=x_out,
        conds_list=conds_list,
        denoised=denoised,
        sigma=sigma,
        timesteps=timesteps,
        table=table,
        text_uncond=text_uncond,
        images=images,
    )


def kdiffusion_step(c):
    """``on_cfg_denoiser`` capture + ``combine_with_rescale``, as the WebUI calls them in one step."""
    denoiser = types.SimpleNamespace(model_wrap=object())
    setattr(denoiser, hooks.ATTR_PLAN, Plan(active=True, prediction="v", cfg_rescale=PHI))
    setattr(denoiser, hooks.ATTR_ORIGINAL_COMBINE, lambda *args: c.denoised)
    x_in, sigma_in = torch.cat([c.x, c.x]), torch.cat([c.sigma, c.sigma])
    params = types.SimpleNamespace(denoiser=denoiser, x=x_in, sigma=sigma_in)

    def step():
        hooks.on_cfg_denoiser(params, sd_model_getter=None, opts=None)
        return hooks.combine_with_rescale(denoiser, c.x_out, c.conds_list, c.text_uncond, 7.0)

    expected = guidance.rescale_denoised(c.x, c.sigma, c.x_out[: c.images], c.denoised, PHI)
    return step, expected


def timestep_step(c, returns_v: bool):
    """The timestep family's forward capture (eps route) + ``combine_rescaled``."""
    model = types.SimpleNamespace(alphas_cumprod=c.table)
    state = timestep_glue.TimestepState(
        plan=Plan(active=True, prediction="eps", cfg_rescale=PHI), kind="ddim", model=model, table=None, v_path=False
    )
    wrap = types.SimpleNamespace()
    if returns_v:
        setattr(wrap, timestep_glue.ATTR_RETURNS_V, True)
    cfg = types.SimpleNamespace(model_wrap=wrap)
    x_in, t_in = torch.cat([c.x, c.x]), torch.cat([c.timesteps, c.timesteps])

    def step():
        timestep_glue._capture_inputs(state, lambda x, t, **kw: None, x_in, t_in)
        return timestep_glue.combine_rescaled(
            cfg, state, lambda *args: c.denoised, c.x_out, c.conds_list, c.text_uncond, 7.0
        )

    positive = c.x_out[: c.images]
    if returns_v:
        expected = guidance.cfg_rescale(c.denoised, positive, PHI)
    else:
        a = c.table[c.timesteps.to(torch.int64)]
        expected = guidance.rescale_eps(c.x, a, positive, c.denoised, PHI)
    return step, expected


def make_step(family: str, c):
    if family == "kdiffusion":
        return kdiffusion_step(c)
    return timestep_step(c, returns_v=family == "timestep-v")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("family", list(BUDGET))
def test_glue_step_kernel_ops_within_budget_no_sync_same_result(family, dtype):
    step, expected = make_step(family, make_case(2, dtype))
    out = step()
    assert out.dtype == dtype
    assert torch.equal(out, expected)
    assert not torch.equal(out, make_case(2, dtype).denoised), "the rescale must really run"
    ops = count_ops(step)
    assert ops.kernel_total <= BUDGET[family], ops.table()
    assert not ops.syncs, ops.syncs


@pytest.mark.parametrize("family", list(BUDGET))
def test_glue_step_never_reads_a_tensor_value_on_the_host(family):
    step, _ = make_step(family, make_case(2, torch.float16, device="meta"))
    out = step()
    assert out.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (set_sync_debug_mode)")
@pytest.mark.parametrize("family", list(BUDGET))
def test_glue_step_has_no_device_sync_on_cuda(family):
    step, _ = make_step(family, make_case(2, torch.float16, device="cuda"))
    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
