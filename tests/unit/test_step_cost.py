"""What the per-step CFG-rescale path asks of torch: how many kernel-launching ops, and never a host read (a sync).

On a GPU the per-step work is launch-bound (``bench/bench_overhead.py --device cuda``), so the number of kernels is
the cost. Counted here with the CPU torch profiler (``bench/opcount.py``: top-level aten ops that compute), which
runs everywhere; the budgets are what the implementation needs (:data:`BUDGET`). A host read of a device value (``.item()``,
``float(t)``, ``bool(t)``, ``nonzero``) is caught three ways: by the profiler, by running the path on ``meta``
tensors (which have no values to read), and under ``torch.cuda.set_sync_debug_mode("error")`` where CUDA exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lib_vpred import guidance

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from opcount import count_ops

#: Kernel-launching ops per step allowed for each entry point (with positive_prediction of single-prompt images).
#: Before issue 11, counted the same way: 19, 19 and 13 in float32 (26, 26 and 19 from float16 inputs).
BUDGET = {"rescale_denoised": 9, "rescale_eps": 9, "cfg_rescale": 7}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_step(images: int, dtype: torch.dtype, device: str = "cpu"):
    """One sampling step's tensors as the WebUI hands them over: x_out rows [cond_0..cond_B-1, uncond_0..], x, sigma."""
    g = torch.Generator().manual_seed(0)
    shape = (4, 64, 64)
    x = (torch.randn(images, *shape, generator=g) * 3).to(device=device, dtype=dtype)
    x_out = torch.randn(2 * images, *shape, generator=g).to(device=device, dtype=dtype)
    conds_list = [[(i, 1.0)] for i in range(images)]
    uncond = x_out[-images:]
    cfg = (uncond.float() + 7.0 * (x_out[:images].float() - uncond.float())).to(dtype)
    sigma = torch.linspace(14.6, 2.5, images).to(device)
    alpha_bar = (1 / (1 + sigma**2)).to(device)
    return x, x_out, conds_list, uncond, cfg, sigma, alpha_bar


def step_fn(name: str, x, x_out, conds_list, uncond, cfg, sigma, alpha_bar):
    def positive():
        return guidance.positive_prediction(x_out, conds_list, uncond)

    if name == "rescale_denoised":
        return lambda: guidance.rescale_denoised(x, sigma, positive(), cfg, 0.7)
    if name == "rescale_eps":
        return lambda: guidance.rescale_eps(x, alpha_bar, positive(), cfg, 0.7)
    return lambda: guidance.cfg_rescale(cfg, positive(), 0.7)


@pytest.mark.parametrize("images", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", list(BUDGET))
def test_per_step_kernel_ops_within_budget_and_no_sync(name, dtype, images):
    fn = step_fn(name, *make_step(images, dtype))
    ops = count_ops(fn)
    assert ops.kernel_total <= BUDGET[name], ops.table()
    assert not ops.syncs, ops.syncs
    assert "aten::clone" not in ops.kernels
    assert "aten::where" not in ops.kernels


def test_the_op_counter_sees_what_it_must():
    """The counter would catch a regression: a clone, a dtype conversion and an item() are all seen."""
    x = torch.randn(2, 4, 8, 8)
    ops = count_ops(lambda: (x.clone(), x.to(torch.float16), x.view(-1), x.std().item()))
    assert ops.kernels["aten::clone"] == 1
    assert ops.kernels["aten::to"] == 1
    assert "aten::view" not in ops.kernels
    assert ops.syncs["aten::item"] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_positive_prediction_of_single_prompts_is_a_view_without_kernels(dtype):
    _, x_out, conds_list, uncond, *_ = make_step(3, dtype)
    pos = guidance.positive_prediction(x_out, conds_list, uncond)
    assert pos.untyped_storage().data_ptr() == x_out.untyped_storage().data_ptr()
    assert torch.equal(pos, x_out[:3])
    assert count_ops(lambda: guidance.positive_prediction(x_out, conds_list, uncond)).kernel_total == 0


def test_meta_tensors_have_no_values_to_read():
    """Sanity for the next test: on meta tensors every host read raises, so running there proves there is none."""
    t = torch.empty(2, device="meta")
    for read in (lambda: t.sum().item(), lambda: float(t[0]), lambda: bool(t[0] > 0), lambda: t.nonzero()):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()


@pytest.mark.parametrize("name", list(BUDGET))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_per_step_path_never_reads_a_tensor_value_on_the_host(name, dtype):
    meta = [t.to("meta") if isinstance(t, torch.Tensor) else t for t in make_step(2, dtype)]
    out = step_fn(name, *meta)()
    assert out.device.type == "meta"
    assert (out.shape, out.dtype) == (meta[4].shape, dtype)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (set_sync_debug_mode)")
@pytest.mark.parametrize("name", list(BUDGET))
def test_per_step_path_has_no_device_sync_on_cuda(name):
    fn = step_fn(name, *make_step(2, torch.float16, "cuda"))
    fn()  # first call outside the check: lazy CUDA initialisation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
