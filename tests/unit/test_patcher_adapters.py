"""The Forge / reForge adapters' pure parts, with real torch: the pass scope puts the very table back (also after an
exception), the post-CFG rescale equals Algorithm 2 written out in v, the reForge model-sampling classes map to the
right prediction, and reForge's RescaleCFG is noticed from its script arguments. The hosts themselves are proven live
(``tests/webui/test_live_forge.py``, ``test_live_reforge.py``)."""

from __future__ import annotations

import math
import types

import pytest
import torch

from lib_vpred import schedule
from lib_vpred.plan import Plan
from lib_vpred.webui import forge, patcher, reforge


class Table(torch.nn.Module):
    """The surface of Forge's ``Prediction`` / reForge's ``ModelSamplingDiscrete`` the adapters use."""

    def __init__(self) -> None:
        super().__init__()
        sigmas = schedule.sigmas_from_alphas_cumprod(schedule.scaled_linear_alphas_cumprod()).float()
        self.register_buffer("sigmas", sigmas)
        self.register_buffer("log_sigmas", sigmas.log())
        self.register_buffer("alphas_cumprod", schedule.scaled_linear_alphas_cumprod().float())
        self.prediction_type = "v_prediction"

    def set_sigmas(self, sigmas: torch.Tensor) -> None:
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())


def forge_model(table: Table) -> types.SimpleNamespace:
    unet = types.SimpleNamespace(model=types.SimpleNamespace(predictor=table))
    return types.SimpleNamespace(forge_objects=types.SimpleNamespace(unet=unet), alphas_cumprod=None)


def test_pass_scope_restores_the_very_table_after_an_exception():
    table = Table()
    model = forge_model(table)
    before = (table.sigmas, table.log_sigmas, table.prediction_type)
    ztsnr = forge.HOST.ztsnr_sigma_table(model, torch.device("cpu"))
    plan = Plan(active=True, prediction="eps", override_prediction="eps", install_ztsnr_table=True)
    scope = patcher.PassScope(forge.HOST, plan, model, ztsnr, kind=None)
    seen = {}

    def sample() -> None:
        with scope:
            seen["sigma_max"], seen["prediction"] = float(table.sigmas[-1]), table.prediction_type
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        sample()
    assert math.isclose(seen["sigma_max"], 4518.76, abs_tol=0.01)
    assert seen["prediction"] == "epsilon"
    assert table.sigmas is before[0]
    assert table.log_sigmas is before[1]
    assert table.prediction_type == before[2]


def test_pass_scope_for_timestep_samplers_restores_the_models_alphas():
    table = Table()
    model = forge_model(table)
    saved = torch.ones(3)
    model.alphas_cumprod = saved
    plan = Plan(active=True, prediction="v", install_ztsnr_table=True)
    with patcher.PassScope(forge.HOST, plan, model, forge.HOST.ztsnr_sigma_table(model, torch.device("cpu")), "ddim"):
        assert model.alphas_cumprod[-1].item() == pytest.approx(schedule.ZTSNR_TERMINAL_ALPHA_BAR, rel=1e-3)
    assert model.alphas_cumprod is saved


def test_post_cfg_rescale_equals_algorithm_2_in_v():
    gen = torch.Generator().manual_seed(0)
    x, cond, uncond = (torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    sigma = torch.tensor([4518.76, 2.5], dtype=torch.float64)
    scale, phi = 7.0, 0.7
    cfg = uncond + scale * (cond - uncond)
    got = patcher.VSpaceCfgRescale(phi)(
        {"denoised": cfg, "cond_denoised": cond, "uncond_denoised": uncond, "input": x, "sigma": sigma, "cond": [{}]}
    )
    s = sigma.view(-1, 1, 1, 1)
    abar = 1 / (s * s + 1)

    def v(x0: torch.Tensor) -> torch.Tensor:
        return abar.sqrt() * (x - x0) / s - (1 - abar).sqrt() * x0

    ratio = v(cond).std(dim=(1, 2, 3), keepdim=True) / v(cfg).std(dim=(1, 2, 3), keepdim=True)
    v_final = phi * ratio * v(cfg) + (1 - phi) * v(cfg)
    want = abar.sqrt() * (x * abar.sqrt()) - (1 - abar).sqrt() * v_final
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-9)
    # no uncond (the CFG-1 shortcut): nothing to rescale
    args = {"denoised": cond, "cond_denoised": cond, "uncond_denoised": None, "input": x, "sigma": sigma}
    assert patcher.VSpaceCfgRescale(phi)(args) is cond


def test_reforge_prediction_from_the_model_sampling_classes():
    eps = type("EPS", (), {})
    v = type("V_PREDICTION", (eps,), {})
    edm = type("EDM", (v,), {})
    discrete = type("ModelSamplingDiscrete", (), {})
    assert reforge.HOST.prediction(type("M", (v, discrete), {})()) == "v"
    assert reforge.HOST.prediction(type("M", (eps, discrete), {})()) == "eps"
    assert reforge.HOST.prediction(type("M", (edm, discrete), {})()) is None
    assert reforge.HOST.prediction(type("M", (v,), {})()) is None  # not a discrete table


def test_reforge_rescale_cfg_is_read_from_its_script_arguments():
    class Script:
        def __init__(self, title: str, start: int, stop: int) -> None:
            self._title, self.args_from, self.args_to = title, start, stop

        def title(self) -> str:
            return self._title

    runner = types.SimpleNamespace(alwayson_scripts=[Script("VPred", 0, 5), Script(reforge.RESCALE_CFG_TITLE, 5, 8)])
    on = types.SimpleNamespace(
        scripts=runner, script_args=[True, "Auto", "Auto", "Trailing", 0.7, True, "Normal", 0.7]
    )
    off = types.SimpleNamespace(
        scripts=runner, script_args=[True, "Auto", "Auto", "Trailing", 0.7, False, "Normal", 0.7]
    )
    assert reforge.builtin_rescale_cfg(on) == "RescaleCFG for reForge: 0.7"
    assert reforge.builtin_rescale_cfg(off) is None
    assert reforge.builtin_rescale_cfg(types.SimpleNamespace()) is None
