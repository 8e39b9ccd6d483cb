"""The script's arguments as the WebUI API delivers them (issue item 5).

The API builds the full argument vector from the UI defaults and copies ``alwayson_scripts[...]["args"]`` over it
positionally (modules/api/api.py:357-360); :func:`api_args` does the same. Each accepted form must reach the plan
(checked through the infotext and the timesteps the model is called at); each rejected form must stop the generation
with ``VPredArgumentError`` (HTTP 422) before the model is called, and leave the next request unaffected.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.glue.test_support import EPS_SD1, V_SD1, call_timesteps, images, new_webui, vpred_keys

TRAILING_4 = [999.0, 749.0, 499.0, 249.0]
UNIFORM_4 = [999.0, 666.0, 333.0, 0.0]  # Euler's own schedule: t = linspace(999, 0, 4)


def api_args(w, args, is_img2img=False):
    """The UI defaults with ``args`` copied over them positionally, truncated to the script's arg count."""
    out = list(w.default_args(is_img2img))
    for i, value in enumerate(list(args)[: len(out)]):
        out[i] = value
    return out


def _timesteps_close(got, expected):
    return len(got) == len(expected) and all(abs(a - b) < 1e-3 for a, b in zip(got, expected, strict=True))


ACCEPTED = {
    "positional-all-five": (
        [True, "v-prediction", "Off", "Schedule type", 0.3],
        {
            "VPred prediction": "v-prediction",
            "VPred ZTSNR": "off",
            "VPred spacing": "schedule type",
            "VPred CFG rescale": "0.3",
        },
        UNIFORM_4,
    ),
    "positional-all-five-normalised": (
        [True, " V-PREDICTION ", "on", "trailing", 1],
        {
            "VPred prediction": "v-prediction",
            "VPred ZTSNR": "on",
            "VPred spacing": "trailing",
            "VPred CFG rescale": "1.0",
        },
        TRAILING_4,
    ),
    "positional-prefix": (
        [True, "Auto", "Auto", "Schedule type"],
        {
            "VPred prediction": "v-prediction (auto)",
            "VPred ZTSNR": "on (auto)",
            "VPred spacing": "schedule type",
            "VPred CFG rescale": "0.7",
        },
        UNIFORM_4,
    ),
    "positional-prefix-disabled": ([False], {"VPred": "disabled"}, UNIFORM_4),
    "dict-one-field": (
        [{"cfg_rescale": 0.3}],
        {
            "VPred prediction": "v-prediction (auto)",
            "VPred ZTSNR": "on (auto)",
            "VPred spacing": "trailing (auto)",
            "VPred CFG rescale": "0.3",
        },
        TRAILING_4,
    ),
    "dict-partial": (
        [{"spacing": "schedule type", "ztsnr": "Off"}],
        {
            "VPred prediction": "v-prediction (auto)",
            "VPred ZTSNR": "off",
            "VPred spacing": "schedule type",
            "VPred CFG rescale": "0.7",
        },
        UNIFORM_4,
    ),
    "dict-disabled": ([{"enabled": False}], {"VPred": "disabled"}, UNIFORM_4),
    "dict-all": (
        [{"enabled": True, "prediction": "Auto", "ztsnr": "Auto", "spacing": "Trailing", "cfg_rescale": 0}],
        {
            "VPred prediction": "v-prediction (auto)",
            "VPred ZTSNR": "on (auto)",
            "VPred spacing": "trailing",
            "VPred CFG rescale": "0.0",
        },
        TRAILING_4,
    ),
}


def test_accepted_arg_forms_reach_the_plan(make_webui):
    """Every accepted form, one request after the other on the same stand-in."""
    w = new_webui(make_webui, True, models=[V_SD1])
    model = w.shared.sd_model
    for case, (args, expected_infotext, expected_timesteps) in ACCEPTED.items():
        model.calls.clear()
        _, out = w.run("txt2img", script_args=api_args(w, args), prompt="a cat", steps=4)
        assert vpred_keys(out) == expected_infotext, case
        assert _timesteps_close(call_timesteps(model), expected_timesteps), case
    assert w.errors.reported == []


def test_a_positional_prefix_is_also_accepted_as_is(make_webui):
    """A script runner that passes fewer values than controls (no API filling) gets the defaults for the rest."""
    w = new_webui(make_webui, True, models=[V_SD1])
    _, short = w.run("txt2img", script_args=[True, "Auto", "Auto"], prompt="a cat", steps=4)
    _, full = w.run("txt2img", script_args=api_args(w, []), prompt="a cat", steps=4)
    assert torch.equal(images(short), images(full))
    assert short.infotexts == full.infotexts


REJECTED = {
    "wrong-type-number-as-string": ([True, "Auto", "Auto", "Trailing", "0.7"], "cfg_rescale", "a number from 0 to 1"),
    "wrong-type-enabled": (["yes"], "enabled", "true or false"),
    "wrong-type-enabled-int": ([1], "enabled", "true or false"),
    "wrong-type-choice": ([True, 1], "prediction", "one of 'Auto', 'v-prediction', 'eps'"),
    "out-of-range": ([True, "Auto", "Auto", "Trailing", 1.5], "cfg_rescale", "a number from 0 to 1"),
    "out-of-range-negative": ([True, "Auto", "Auto", "Trailing", -0.05], "cfg_rescale", "a number from 0 to 1"),
    "not-finite": ([True, "Auto", "Auto", "Trailing", math.nan], "cfg_rescale", "a number from 0 to 1"),
    "unknown-choice": ([True, "maybe"], "prediction", "one of 'Auto', 'v-prediction', 'eps'"),
    "unknown-choice-ztsnr": ([True, "Auto", "sometimes"], "ztsnr", "one of 'Auto', 'On', 'Off'"),
    "unknown-choice-spacing": (
        [True, "Auto", "Auto", "leading"],
        "spacing",
        "one of 'Auto', 'Trailing', 'Schedule type'",
    ),
    "unknown-field": ([{"phi": 1}], "phi", "enabled, prediction, ztsnr, spacing, cfg_rescale"),
    "dict-out-of-range": ([{"cfg_rescale": 2}], "cfg_rescale", "a number from 0 to 1"),
    "dict-unknown-choice": ([{"prediction": "maybe"}], "prediction", "'Auto', 'v-prediction', 'eps'"),
}


@pytest.mark.parametrize("model_spec", [V_SD1, EPS_SD1], ids=["v", "eps"])
def test_rejected_args_stop_the_generation_before_any_model_call(make_webui, model_spec):
    """Every rejected form, one request after the other on the same stand-in: 422, the field, the allowed values."""
    w = new_webui(make_webui, True, models=[model_spec])
    error_cls = w.script_module.VPredArgumentError
    for case, (args, field, allowed) in REJECTED.items():
        with pytest.raises(error_cls) as caught:
            w.run("txt2img", script_args=api_args(w, args), prompt="a cat", steps=4)
        error = caught.value
        assert error.status_code == 422, case
        assert error.field == field, case
        assert allowed in str(error), case
        assert field in str(error.detail), case
    assert w.shared.sd_model.calls == []
    assert w.errors.reported == []


@pytest.mark.parametrize(
    ("kind", "extra", "model"),
    [
        ("txt2img", {"enable_hr": True, "hr_second_pass_steps": 3}, V_SD1),
        ("img2img", {"denoising_strength": 0.5}, V_SD1),
        ("txt2img", {}, EPS_SD1),
    ],
    ids=["hires", "img2img", "eps-checkpoint"],
)
def test_a_bad_request_leaves_the_next_good_one_unaffected(make_webui, kind, extra, model):
    w = new_webui(make_webui, True, models=[model])
    is_img2img = kind == "img2img"
    with pytest.raises(w.script_module.VPredArgumentError):
        w.run(kind, script_args=api_args(w, [{"phi": 1}], is_img2img), prompt="a cat", steps=4, **extra)
    with pytest.raises(w.script_module.VPredArgumentError):
        w.run(kind, script_args=api_args(w, [True, "maybe"], is_img2img), prompt="a cat", steps=4, **extra)
    assert w.shared.sd_model.calls == []
    good = api_args(w, [{"cfg_rescale": 0.4}], is_img2img)
    p, out = w.run(kind, script_args=good, prompt="a cat", steps=4, **extra)

    fresh = new_webui(make_webui, True, models=[model])
    _, expected = fresh.run(
        kind, script_args=api_args(fresh, [{"cfg_rescale": 0.4}], is_img2img), prompt="a cat", steps=4, **extra
    )
    assert torch.equal(images(out), images(expected))
    assert out.infotexts == expected.infotexts
    assert p.sampler_noise_scheduler_override is None
    assert w.errors.reported == []
