"""The test-only probe extension (``tests/webui/probe``) against stand-in host modules: it passes every call through
unchanged, records what the live tests read, and keeps Forge's JSON as it was while adding reForge's second table.

The real hosts prove it end to end (the same PNG with and without the probe); these tests pin the wrapping itself.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

PROBE = Path(__file__).resolve().parents[2] / "tests" / "webui" / "probe" / "scripts" / "vpred_probe.py"
#: the record's keys on Forge, as before reForge was supported
FORGE_KEYS = {
    "probe", "supported", "host", "generations", "capture", "passes", "prediction_type",
    "sigmas_before", "sigmas_during", "sigmas_after", "calls",
}  # fmt: skip
CALL_KEYS = {
    "index", "pass", "sigma", "t", "cond_scale", "has_cfg_function", "post_cfg_functions", "pre_cfg_functions",
    "has_model_function_wrapper", "tensors",
}  # fmt: skip


def _stock_sigmas() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    acp = torch.cumprod(1 - betas, 0)
    return ((1 - acp) / acp) ** 0.5


class _Table:
    """A model sampling / predictor: a sigma table and the nearest-log-sigma timestep."""

    def __init__(self):
        self.sigmas = _stock_sigmas().float()
        self.log_sigmas = self.sigmas.log()

    def timestep(self, sigma):
        return (sigma.log() - self.log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)


def _webui_modules(monkeypatch) -> None:
    scripts = types.ModuleType("modules.scripts")
    scripts.Script = object
    scripts.AlwaysVisible = object()
    callbacks = types.ModuleType("modules.script_callbacks")
    callbacks.on_app_started = lambda fn: None
    package = types.ModuleType("modules")
    package.scripts, package.script_callbacks = scripts, callbacks
    for name, module in (("modules", package), ("modules.scripts", scripts), ("modules.script_callbacks", callbacks)):
        monkeypatch.setitem(sys.modules, name, module)


def _load(monkeypatch, name: str):
    spec = importlib.util.spec_from_file_location(name, PROBE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def forge(monkeypatch):
    _webui_modules(monkeypatch)
    sf = types.ModuleType("backend.sampling.sampling_function")

    def inner(model, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None, return_full=False):  # noqa: B006
        cond_pred, uncond_pred = x * 0.5, x * 0.25
        result = uncond_pred + cond_scale * (cond_pred - uncond_pred)
        return (result, cond_pred, uncond_pred) if return_full else result

    sf.sampling_function_inner = inner
    sampling = types.ModuleType("backend.sampling")
    sampling.sampling_function = sf
    backend = types.ModuleType("backend")
    backend.sampling = sampling
    for name, module in (
        ("backend", backend),
        ("backend.sampling", sampling),
        ("backend.sampling.sampling_function", sf),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    return _load(monkeypatch, "vpred_probe_forge"), sf


@pytest.fixture
def reforge(monkeypatch):
    _webui_modules(monkeypatch)
    samplers = types.ModuleType("ldm_patched.modules.samplers")
    seen = []

    def cfg_function(model, cond_pred, uncond_pred, cond_scale, x, timestep, model_options={}, cond=None, uncond=None):  # noqa: B006
        seen.append((cond, uncond))
        return uncond_pred + (cond_pred - uncond_pred) * cond_scale

    samplers.cfg_function = cfg_function
    ms = types.ModuleType("ldm_patched.modules.model_sampling")
    ms.EPS = type("EPS", (), {})
    ms.V_PREDICTION = type("V_PREDICTION", (ms.EPS,), {})
    ms.EDM = type("EDM", (ms.V_PREDICTION,), {})
    ms.CONST = type("CONST", (), {})
    package = types.ModuleType("ldm_patched.modules")
    package.samplers, package.model_sampling = samplers, ms
    root = types.ModuleType("ldm_patched")
    root.modules = package
    for name, module in (
        ("ldm_patched", root),
        ("ldm_patched.modules", package),
        ("ldm_patched.modules.samplers", samplers),
        ("ldm_patched.modules.model_sampling", ms),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "backend", raising=False)
    monkeypatch.setitem(sys.modules, "backend.sampling", None)  # no Forge back end: ImportError
    return _load(monkeypatch, "vpred_probe_reforge"), samplers, ms, seen


def test_forge_record_keeps_its_format(forge):
    probe, sf = forge
    predictor = _Table()
    predictor.prediction_type = "v_prediction"
    unet = types.SimpleNamespace(model=types.SimpleNamespace(predictor=predictor))
    p = types.SimpleNamespace(sd_model=types.SimpleNamespace(forge_objects=types.SimpleNamespace(unet=unet)))
    probe.VPredProbe.process(None, p)
    model = types.SimpleNamespace(predictor=predictor)
    x = torch.randn(1, 4, 8, 8)
    sigma = torch.tensor([14.614641])
    out = sf.sampling_function_inner(model, x, sigma, None, None, 7.0, {})
    assert torch.equal(out, probe._original_inner(model, x, sigma, None, None, 7.0, {}))
    probe.VPredProbe.postprocess(None, p, None)
    last = probe._last()
    assert set(last) == FORGE_KEYS
    assert last["host"] == "forge"
    assert last["supported"]
    (call,) = last["calls"]
    assert set(call) == CALL_KEYS
    assert call["t"] == [999.0]
    assert set(call["tensors"]) == {"x", "cond_pred", "uncond_pred", "result"}


def _p(model_sampling, wrap=None):
    acp = 1 / (_stock_sigmas().float() ** 2 + 1)
    unet = types.SimpleNamespace(model=types.SimpleNamespace(model_sampling=model_sampling))
    sd_model = types.SimpleNamespace(forge_objects=types.SimpleNamespace(unet=unet), alphas_cumprod=acp)
    return types.SimpleNamespace(sd_model=sd_model, sampler=types.SimpleNamespace(model_wrap=wrap))


def test_reforge_passes_cfg_through_and_records_both_tables(reforge):
    probe, samplers, ms, seen = reforge
    assert samplers.cfg_function is probe._probe_cfg
    v_sampling = type("ModelSampling", (_Table, ms.V_PREDICTION), {})()
    wrap = types.SimpleNamespace(
        sigmas=((1 - _p(None).sd_model.alphas_cumprod) / _p(None).sd_model.alphas_cumprod) ** 0.5
    )
    p = _p(v_sampling, wrap)
    probe.VPredProbe.process(None, p)
    probe.VPredProbe.process_before_every_sampling(None, p)
    model = types.SimpleNamespace(model_sampling=v_sampling)
    x, cond_pred, uncond_pred = torch.randn(3, 1, 4, 8, 8)
    for s in (14.614641, 0.0291672):
        out = samplers.cfg_function(model, cond_pred, uncond_pred, 7.0, x, torch.tensor([s]), {}, cond="c", uncond="u")
        assert torch.equal(out, uncond_pred + (cond_pred - uncond_pred) * 7.0)  # the original's result, unchanged
    assert seen == [("c", "u"), ("c", "u")]  # keyword arguments passed on
    probe.VPredProbe.postprocess(None, p, None)
    last = probe._last()
    assert set(last) == FORGE_KEYS | {
        "wrapper",
        "wrapper_sigmas_before",
        "wrapper_sigmas_during",
        "wrapper_sigmas_after",
    }
    assert last["host"] == "reforge"
    assert last["prediction_type"] == "v_prediction"
    assert last["passes"] == 1
    assert [c["t"] for c in last["calls"]] == [[999.0], [0.0]]
    assert set(last["calls"][0]) == CALL_KEYS
    assert set(last["calls"][0]["tensors"]) == {"x", "cond_pred", "uncond_pred", "result"}
    assert last["calls"][1]["tensors"] is None  # default capture: the first call only
    assert last["sigmas_during"] == last["sigmas_before"] == last["sigmas_after"]
    assert last["wrapper"] == "model_wrap.sigmas"
    assert last["wrapper_sigmas_during"]["n"] == 1000
    assert last["wrapper_sigmas_before"] == last["wrapper_sigmas_after"]
    assert not last.get("errors")


def test_reforge_probe_failure_never_breaks_a_generation(reforge):
    probe, samplers, _, _ = reforge
    model = types.SimpleNamespace(model_sampling=object())  # no timestep(): recording fails
    x, cond_pred, uncond_pred = torch.randn(3, 1, 4, 8, 8)
    out = samplers.cfg_function(model, cond_pred, uncond_pred, 7.0, x, torch.tensor([1.0]), {}, cond=[], uncond=[])
    assert torch.equal(out, uncond_pred + (cond_pred - uncond_pred) * 7.0)
    assert probe._last()["errors"]
