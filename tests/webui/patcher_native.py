"""What a stock patcher host (Forge, reForge) does with a v-prediction SD1.5 checkpoint, seen through the probe.

The checks of ``../shared/design/forge-host.md`` and ``reforge-host.md`` ("Native behaviour"), shared by
``test_live_forge_native.py`` and ``test_live_reforge_native.py``: full-size random SD1.5 checkpoints ``sd15-v`` (+ YAML
with ``parameterization: "v"``) and ``sd15-eps`` (same tensors, no YAML), the probe extension ``tests/webui/probe``
installed, **without sd-webui-vpred acting** (its script, when the host lists it, gets ``Enable`` False; the probe
shows that no CFG function was installed on the UNet either). Three generations at 64x64 (Euler 8 and DDIM 8 on
``sd15-v``, Euler 4 on ``sd15-eps``), about 1-2 s per step on a 2-core CPU, plus the first checkpoint load.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tests.webui.forge_client import STOCK_SIGMA_MAX, STOCK_SIGMA_MIN, tensor

SMALL = {"prompt": "a cat", "negative_prompt": "", "width": 64, "height": 64, "cfg_scale": 7.0, "seed": 1234}
#: Euler, 8 steps, stock SD1.5 table (Automatic schedule): the sigmas of forge-host.md and reforge-host.md
EULER8_SIGMAS = [14.6146, 6.6780, 3.5221, 2.0606, 1.2768, 0.7913, 0.4397, 0.0292]


class PatcherNativeChecks:
    """Native-behaviour checks for one patcher host. Subclasses (``Test...``) set the client and what the probe keeps."""

    #: the probe's ``host`` field this host must report (``None``: not checked)
    probe_host: str | None = None
    #: the probe also records the host's A1111-style table (``wrapper_sigmas_*``: reForge)
    has_wrapper_table = False
    #: relative tolerance of the stock sigma_max (reForge's ``ldm_patched`` table is float32 from another formula)
    sigma_max_rel_tol = 1e-6

    def call(self, path: str, body: dict[str, Any] | None = None, base: str | None = None) -> tuple[int, Any]:
        raise NotImplementedError

    # helpers

    def generate(self, vpred_off: dict[str, Any], checkpoint: str, **fields: Any) -> tuple[dict, dict]:
        """One txt2img on ``checkpoint``; returns (the API answer with its info decoded, the probe's record)."""
        status, reset = self.call("/vpred-probe/v1/reset", {"capture": [0]})
        assert status == 200, reset
        body = {
            **SMALL,
            **fields,
            "override_settings": {"sd_model_checkpoint": checkpoint},
            "alwayson_scripts": vpred_off,
        }
        status, out = self.call("/sdapi/v1/txt2img", body)
        assert status == 200, out
        out["info"] = json.loads(out["info"])
        assert out["info"]["sd_model_name"] == checkpoint  # an unknown override would be dropped silently
        status, probe = self.call("/vpred-probe/v1/last")
        assert status == 200, probe
        assert probe["supported"], probe
        if self.probe_host is not None:
            assert probe["host"] == self.probe_host, probe["host"]
        assert not probe.get("errors"), probe["errors"]
        return out, probe

    def assert_stock(self, table: dict[str, Any]) -> None:
        assert table["n"] == 1000
        assert math.isclose(table["min"], STOCK_SIGMA_MIN, rel_tol=1e-4), table
        assert math.isclose(table["max"], STOCK_SIGMA_MAX, rel_tol=self.sigma_max_rel_tol), table

    def assert_stock_tables(self, probe: dict[str, Any], wrapper: str) -> None:
        """The table(s) stock before, during and after the generation, and each left as it was; ``wrapper`` names the
        A1111-style table the probe read on hosts that have one (``model_wrap.sigmas``, or ``alphas_cumprod`` for the
        timestep samplers, which read the model's table directly)."""
        before, during, after = probe["sigmas_before"], probe["sigmas_during"], probe["sigmas_after"]
        self.assert_stock(before)
        assert during == before  # no ZTSNR table while sampling
        assert after == before  # and the host's table is left as it was
        if self.has_wrapper_table:
            assert probe["wrapper"] == wrapper
            w_before, w_during, w_after = (probe[f"wrapper_sigmas_{k}"] for k in ("before", "during", "after"))
            self.assert_stock(w_before)
            assert w_during == w_before
            assert w_after == w_before

    @staticmethod
    def assert_native(probe: dict[str, Any]) -> None:
        """Nothing hooked the CFG: no ``sampler_cfg_function``, no post-CFG function (sd-webui-vpred is not acting)."""
        for c in probe["calls"]:
            assert not c["has_cfg_function"], c
            assert c["post_cfg_functions"] == 0, c

    # fixtures

    @pytest.fixture(scope="class")
    @classmethod
    def vpred_off(cls) -> dict[str, Any]:
        """``alwayson_scripts`` that keep sd-webui-vpred out of the way (when the host loaded it at all)."""
        status, scripts = cls().call("/sdapi/v1/scripts")
        assert status == 200, scripts
        assert "vpred probe" in scripts["txt2img"], "the probe extension is not installed (tools/host.py start ...)"
        return {"vpred": {"args": [False]}} if "vpred" in scripts["txt2img"] else {}

    @pytest.fixture(scope="class")
    @classmethod
    def euler_v(cls, vpred_off):
        return cls().generate(vpred_off, "sd15-v", steps=8, sampler_name="Euler", scheduler="Automatic")

    @pytest.fixture(scope="class")
    @classmethod
    def ddim_v(cls, vpred_off):
        return cls().generate(vpred_off, "sd15-v", steps=8, sampler_name="DDIM", scheduler="Automatic")

    @pytest.fixture(scope="class")
    @classmethod
    def euler_eps(cls, vpred_off):
        return cls().generate(vpred_off, "sd15-eps", steps=4, sampler_name="Euler", scheduler="Automatic")

    # tests

    def test_v_checkpoint_is_v_prediction_with_the_stock_euler_sigmas(self, euler_v):
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
        self.assert_native(probe)
        self.assert_stock_tables(probe, "model_wrap.sigmas")

    def test_cfg_is_plain_cfg_of_the_captured_predictions(self, euler_v):
        """The stock host combines ``uncond + s * (cond - uncond)``: recomputed from the probe's tensors, within 1e-5."""
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

    def test_ddim_makes_seven_model_calls_for_eight_steps_and_never_reaches_t999(self, ddim_v):
        _, probe = ddim_v
        assert probe["prediction_type"] == "v_prediction"
        ts = [c["t"][0] for c in probe["calls"]]
        assert len(ts) == 7, ts
        assert ts[0] == 876.0, ts
        assert ts[-1] == 126.0, ts
        assert 999.0 not in ts
        assert ts == sorted(ts, reverse=True)
        self.assert_native(probe)
        self.assert_stock_tables(probe, "alphas_cumprod")

    def test_eps_twin_generates_as_eps(self, euler_eps):
        out, probe = euler_eps
        assert len(out["images"]) == 1
        assert probe["prediction_type"] == "epsilon"
        assert len(probe["calls"]) == 4
        assert math.isclose(probe["calls"][0]["sigma"][0], STOCK_SIGMA_MAX, rel_tol=1e-6)
        self.assert_native(probe)
        self.assert_stock_tables(probe, "model_wrap.sigmas")
