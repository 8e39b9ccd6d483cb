"""On a host this version does not support (Forge, reForge, an unknown layout) the extension changes no generation.

The stand-in gets a Forge-family layout this version does not know: ``modules_forge`` and ``backend`` packages
importable beside ``modules``, as in a Forge tree, but without the Forge2 back-end modules the Forge adapter uses
(``backend.sampling.sampling_function`` ...): an older or newer Forge. A v-pred checkpoint, which the extension
would otherwise change, must then sample bit for bit as without the extension, with no infotext key, no Trailing
schedule type, no CFG hook, and the panel must say why.
"""

from __future__ import annotations

import pytest

from tests.glue.test_support import V_SD1, pair, vpred_keys
from tests.glue.test_unchanged_runs import SCENARIOS, _split, assert_same_run


@pytest.fixture
def forge_layout(tmp_path, monkeypatch):
    root = tmp_path / "forge-like"
    for package in ("modules_forge", "backend"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(root))
    return root


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "DDIM"])
def test_v_checkpoint_is_bit_identical_on_an_unsupported_host(make_webui, forge_layout, sampler):
    with_ext, without = pair(make_webui, models=[V_SD1])
    for name, scenario in SCENARIOS.items():
        kind, kwargs = _split(scenario)
        out = assert_same_run(with_ext, without, kind, label=f"{sampler}: {name}", sampler_name=sampler, **kwargs)
        assert vpred_keys(out) == {}
    # explicit arguments (API) do not act either
    assert_same_run(
        with_ext, without, script_args=[True, "v-prediction", "On", "Trailing", 1.0], prompt="a cat", steps=4
    )


def test_unsupported_host_is_said_and_nothing_is_registered(make_webui, forge_layout):
    with_ext, _without = pair(make_webui, models=[V_SD1])
    module = with_ext.script_module
    assert not module.HOST.supported
    assert module.HOST.name == "Forge"
    status = module._status_text(True, "Auto", "Auto", "Trailing", 0.7).line
    assert "Forge is not supported" in status
    assert "changes nothing" in status
    with with_ext.active():
        from modules import script_callbacks, sd_schedulers

        assert "Trailing" not in [s.label for s in sd_schedulers.schedulers]
        assert script_callbacks.callback_map["callbacks_cfg_denoiser"] == []
