"""Live tier, Forge: what stock Forge does with a v-prediction SD1.5 checkpoint, seen through the probe extension.

The anchor of ``../shared/design/forge-host.md`` ("Native behaviour"), reproduced on a running Forge
(``python tools/host.py start forge``: full-size random SD1.5 checkpoints ``sd15-v`` (+ YAML with
``parameterization: "v"``) and ``sd15-eps`` (same tensors, no YAML), the probe extension ``tests/webui/probe``
installed) **without sd-webui-vpred acting**: its script, when Forge lists it, gets ``Enable`` False; the probe shows
that no CFG function was installed on the UNet either.

Skipped unless ``VPRED_FORGE_URL`` names the Forge (e.g. ``export VPRED_FORGE_URL=$(python tools/host.py start
forge)``). The skip is a module-level one, so ``VPRED_REQUIRE_LIVE=1`` (set by ``tools/dev.sh test`` once it has
started the A1111 host, which turns skips of live tests into failures) does not fail a run that never started a
Forge; ``VPRED_REQUIRE_FORGE=1`` makes a missing ``VPRED_FORGE_URL`` a failure instead. Three generations at 64x64 (Euler 8 and DDIM 8 on ``sd15-v``, Euler 4 on ``sd15-eps``), about 1-2 s per
step on a 2-core CPU, plus the first checkpoint load.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tests.webui.forge_client import STOCK_SIGMA_MAX, STOCK_SIGMA_MIN, call, require_forge, tensor

require_forge()
pytestmark = [pytest.mark.webui]

SMALL = {"prompt": "a cat", "negative_prompt": "", "width": 64, "height": 64, "cfg_scale": 7.0, "seed": 1234}
#: Euler, 8 steps, stock SD1.5 table (Automatic schedule): the sigmas of forge-host.md
EULER8_SIGMAS = [14.6146, 6.6780, 3.5221, 2.0606, 1.2768, 0.7913, 0.4397, 0.0292]


@pytest.fixture(scope="module")
def vpred_off() -> dict[str, Any]:
    """``alwayson_scripts`` that keep sd-webui-vpred out of the way (when Forge loaded it at all)."""
    status, scripts = call("/sdapi/v1/scripts")
    assert status == 200, scripts
    assert "vpred probe" in scripts["txt2img"], "the probe extension is not installed (tools/host.py start forge)"
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


def assert_stock_table(probe: dict[str, Any]) -> None:
    before, during, after = probe["sigmas_before"], probe["sigmas_during"], probe["sigmas_after"]
    assert before["n"] == 1000
    assert math.isclose(before["min"], STOCK_SIGMA_MIN, rel_tol=1e-4), before
    assert math.isclose(before["max"], STOCK_SIGMA_MAX, rel_tol=1e-6), before
    assert during == before  # no ZTSNR table while sampling
    assert after == before  # and the predictor is left as it was


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
    assert_stock_table(probe)


def test_cfg_is_plain_cfg_of_the_captured_predictions(euler_v):
    """Stock Forge combines ``uncond + s * (cond - uncond)``: recomputed from the probe's tensors, within 1e-5."""
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
    assert_stock_table(probe)


def test_eps_twin_generates_as_eps(euler_eps):
    out, probe = euler_eps
    assert len(out["images"]) == 1
    assert probe["prediction_type"] == "epsilon"
    assert len(probe["calls"]) == 4
    assert math.isclose(probe["calls"][0]["sigma"][0], STOCK_SIGMA_MAX, rel_tol=1e-6)
    assert_native(probe)
    assert_stock_table(probe)
