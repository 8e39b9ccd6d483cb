"""Live tier, reForge: what stock reForge does with a v-prediction SD1.5 checkpoint, seen through the probe extension.

The anchor of ``../shared/design/reforge-host.md`` ("Native behaviour"), reproduced on a running reForge
(``python tools/host.py start reforge``: full-size random SD1.5 checkpoints ``sd15-v`` (+ YAML with
``parameterization: "v"``) and ``sd15-eps`` (same tensors, no YAML), the probe extension ``tests/webui/probe``
installed) **without sd-webui-vpred acting**: its script, when reForge lists it, gets ``Enable`` False; the probe shows
that no CFG function was installed on the UNet either.

reForge keeps two sigma tables: its ``ldm_patched`` model sampling (``sigmas_*`` in the probe's record), which maps
each sigma to the UNet's timestep, and the A1111-style one (``wrapper_sigmas_*``: the k-diffusion wrapper's, or
``alphas_cumprod`` for DDIM), which gives the sampler its sigma schedule. Both must be stock here.

Skipped unless ``VPRED_REFORGE_URL`` names the reForge (e.g. ``export VPRED_REFORGE_URL=$(python tools/host.py start
reforge)``), as a module-level skip (``VPRED_REQUIRE_LIVE=1`` of an A1111-only run does not fail it);
``VPRED_REQUIRE_REFORGE=1`` makes a missing ``VPRED_REFORGE_URL`` a failure instead. Three generations at 64x64
(Euler 8 and DDIM 8 on ``sd15-v``, Euler 4 on ``sd15-eps``), about 1-2 s per step on a 2-core CPU.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tests.webui.reforge_client import STOCK_SIGMA_MAX, STOCK_SIGMA_MIN, call, require_reforge, tensor

require_reforge()
pytestmark = [pytest.mark.webui]

SMALL = {"prompt": "a cat", "negative_prompt": "", "width": 64, "height": 64, "cfg_scale": 7.0, "seed": 1234}
#: Euler, 8 steps, stock SD1.5 table (Automatic schedule): the sigmas of reforge-host.md
EULER8_SIGMAS = [14.6146, 6.6780, 3.5221, 2.0606, 1.2768, 0.7913, 0.4397, 0.0292]


@pytest.fixture(scope="module")
def vpred_off() -> dict[str, Any]:
    """``alwayson_scripts`` that keep sd-webui-vpred out of the way (when reForge loaded it at all)."""
    status, scripts = call("/sdapi/v1/scripts")
    assert status == 200, scripts
    assert "vpred probe" in scripts["txt2img"], "the probe extension is not installed (tools/host.py start reforge)"
    return {"vpred": {"args": [False]}} if "vpred" in scripts["txt2img"] else {}


def generate(vpred_off: dict[str, Any], checkpoint: str, **fields: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """One txt2img on ``checkpoint``; returns (the API answer with its info decoded, the probe's record)."""
    status, reset = call("/vpred-probe/v1/reset", {"capture": [0]})
    assert status == 200, reset
    body = {**SMALL, **fields, "override_settings": {"sd_model_checkpoint": checkpoint}, "alwayson_scripts": vpred_off}
    status, out = call("/sdapi/v1/txt2img", body)
    assert status == 200, out
    out["info"] = json.loads(out["info"])
    assert out["info"]["sd_model_name"] == checkpoint  # an unknown override would be dropped silently
    status, probe = call("/vpred-probe/v1/last")
    assert status == 200, probe
    assert probe["supported"], probe
    assert probe["host"] == "reforge", probe["host"]
    assert not probe.get("errors"), probe["errors"]
    return out, probe


@pytest.fixture(scope="module")
def euler_v(vpred_off):
    return generate(vpred_off, "sd15-v", steps=8, sampler_name="Euler", scheduler="Automatic")


@pytest.fixture(scope="module")
def ddim_v(vpred_off):
    return generate(vpred_off, "sd15-v", steps=8, sampler_name="DDIM", scheduler="Automatic")


@pytest.fixture(scope="module")
def euler_eps(vpred_off):
    return generate(vpred_off, "sd15-eps", steps=4, sampler_name="Euler", scheduler="Automatic")


def assert_native(probe: dict[str, Any]) -> None:
    """Nothing hooked the CFG: no ``sampler_cfg_function``, no post-CFG function (sd-webui-vpred is not acting)."""
    for c in probe["calls"]:
        assert not c["has_cfg_function"], c
        assert c["post_cfg_functions"] == 0, c


def assert_stock(table: dict[str, Any]) -> None:
    assert table["n"] == 1000
    assert math.isclose(table["min"], STOCK_SIGMA_MIN, rel_tol=1e-4), table
    assert math.isclose(table["max"], STOCK_SIGMA_MAX, rel_tol=1e-5), table


def assert_stock_tables(probe: dict[str, Any], wrapper: str) -> None:
    """Both tables stock before, during and after the generation, and each left as it was."""
    before, during, after = probe["sigmas_before"], probe["sigmas_during"], probe["sigmas_after"]
    assert_stock(before)
    assert during == before  # no ZTSNR table while sampling
    assert after == before  # and the model sampling is left as it was
    assert probe["wrapper"] == wrapper
    w_before, w_during, w_after = (probe[f"wrapper_sigmas_{k}"] for k in ("before", "during", "after"))
    assert_stock(w_before)
    assert w_during == w_before
    assert w_after == w_before


def test_v_checkpoint_is_v_prediction_with_the_stock_euler_sigmas(euler_v):
    out, probe = euler_v
    assert len(out["images"]) == 1
    assert probe["prediction_type"] == "v_prediction"
    assert probe["passes"] == 1
    sigmas = [c["sigma"][0] for c in probe["calls"]]
    assert len(sigmas) == len(EULER8_SIGMAS), sigmas
    for got, want in zip(sigmas, EULER8_SIGMAS, strict=True):
        assert math.isclose(got, want, abs_tol=5e-5), (sigmas, EULER8_SIGMAS)
    assert probe["calls"][0]["t"] == [999.0]  # no ZTSNR: the first sigma is the stock sigma_max at t = 999
    assert [c["cond_scale"] for c in probe["calls"]] == [7.0] * 8
    assert_native(probe)
    assert_stock_tables(probe, "model_wrap.sigmas")


def test_cfg_is_plain_cfg_of_the_captured_predictions(euler_v):
    """Stock reForge combines ``uncond + s * (cond - uncond)``: recomputed from the probe's tensors, within 1e-5."""
    _, probe = euler_v
    first = probe["calls"][0]
    assert first["tensors"] is not None
    assert all(c["tensors"] is None for c in probe["calls"][1:])  # only the chosen call's tensors are kept
    t = first["tensors"]
    shape, x = tensor(t["x"])
    assert shape == [1, 4, 8, 8]  # 64x64 pixels, latent factor 8
    _, cond = tensor(t["cond_pred"])
    _, uncond = tensor(t["uncond_pred"])
    _, result = tensor(t["result"])
    s = first["cond_scale"]
    plain = [u + s * (c - u) for c, u in zip(cond, uncond, strict=True)]
    scale = max(abs(v) for v in result)
    assert scale > 0
    assert max(abs(a - b) for a, b in zip(plain, result, strict=True)) <= 1e-5 * scale
    assert any(abs(c - u) > 1e-3 for c, u in zip(cond, uncond, strict=True))  # the prompt matters
    assert len(set(x)) > 1
    assert all(math.isfinite(v) for v in result)


def test_ddim_makes_seven_model_calls_for_eight_steps_and_never_reaches_t999(ddim_v):
    _, probe = ddim_v
    assert probe["prediction_type"] == "v_prediction"
    ts = [c["t"][0] for c in probe["calls"]]
    assert len(ts) == 7, ts
    assert ts[0] == 876.0, ts
    assert ts[-1] == 126.0, ts
    assert 999.0 not in ts
    assert ts == sorted(ts, reverse=True)
    assert_native(probe)
    # the timestep samplers read sd_model.alphas_cumprod directly: no k-diffusion wrapper table
    assert_stock_tables(probe, "alphas_cumprod")


def test_eps_twin_generates_as_eps(euler_eps):
    out, probe = euler_eps
    assert len(out["images"]) == 1
    assert probe["prediction_type"] == "epsilon"
    assert len(probe["calls"]) == 4
    assert math.isclose(probe["calls"][0]["sigma"][0], STOCK_SIGMA_MAX, rel_tol=1e-6)
    assert_native(probe)
    assert_stock_tables(probe, "model_wrap.sigmas")
