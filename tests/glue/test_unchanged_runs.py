"""Runs the extension must leave bit-for-bit as the WebUI does them without it (issue items 1, 7, 8, 10, 11).

Each test builds two fresh stand-ins, one with and one without the extension, with the same checkpoint files and the
same seeds, and compares the latents with ``torch.equal``, the model calls and the infotext.
"""

from __future__ import annotations

import pytest
import torch

from tests.glue.test_support import (
    EPS_SD1,
    EPS_SDXL,
    SKIP_IF_TIMESTEP_SUPPORTED,
    V_SD1,
    V_SDXL_KEYS,
    bit_equal,
    images,
    pair,
    vpred_keys,
)

DEFAULTS = [True, "Auto", "Auto", "Trailing", 0.7]

#: Settings that must not act on an eps checkpoint: prediction Auto never selects v for it.
EPS_NEUTRAL_ARGS = {
    "defaults": None,
    "defaults-explicit": DEFAULTS,
    "schedule-type-phi0.3": [True, "Auto", "Auto", "Schedule type", 0.3],
    "phi1": [True, "Auto", "Auto", "Trailing", 1.0],
    "phi0": [True, "Auto", "Auto", "Trailing", 0.0],
    "ztsnr-off": [True, "Auto", "Off", "Trailing", 0.7],
    "forced-eps": [True, "eps", "Auto", "Trailing", 0.7],
    "disabled": [False, "v-prediction", "On", "Trailing", 1.0],
}

#: (name, run kwargs): every generation shape the WebUI has, on small latents and few steps.
SCENARIOS = {
    "txt2img": {"prompt": "a cat", "steps": 4},
    "hires": {"prompt": "a cat", "steps": 4, "enable_hr": True, "hr_second_pass_steps": 3, "denoising_strength": 0.6},
    "img2img": ("img2img", {"prompt": "a cat", "steps": 5, "denoising_strength": 0.5}),
    "batch2": {"prompt": ["a cat", "a dog"], "steps": 4, "batch_size": 2},
    "n_iter2": {"prompt": "a cat", "steps": 4, "n_iter": 2},
    "and-prompt": {"prompt": "a cat AND a dog:0.5", "steps": 4},
    "img2img-batch2-and": ("img2img", {"prompt": "a cat AND a dog:0.5", "steps": 4, "batch_size": 2}),
}

SAMPLERS = ["Euler", "Euler a", "DPM++ 2M", "Heun", "DPM2", "DDIM", "LCM"]


def _split(scenario):
    return scenario if isinstance(scenario, tuple) else ("txt2img", scenario)


def assert_same_run(with_ext, without, kind="txt2img", script_args=None, label="", expect_keys=None, **kwargs):
    """Run both stand-ins the same way and compare everything observable (``label`` names the case on failure).

    ``expect_keys``: the only infotext keys the extension may add (a disabled run on a v checkpoint records
    ``VPred: disabled`` so that pasting it reproduces the image); everything else must be identical.
    """
    expect_keys = expect_keys or {}
    model_a = with_ext.shared.sd_model
    model_b = without.shared.sd_model
    model_a.calls.clear()
    model_b.calls.clear()
    p_a, out_a = with_ext.run(kind, script_args=script_args, **kwargs)
    _, out_b = without.run(kind, **kwargs)
    assert bit_equal(images(out_a), images(out_b)), label
    calls_a = with_ext.shared.sd_model.calls
    calls_b = without.shared.sd_model.calls
    assert len(calls_a) == len(calls_b) > 0, label
    assert all(bit_equal(a, b) for a, b in zip(calls_a, calls_b, strict=True)), label
    suffix = "".join(f", {k}: {v}" for k, v in expect_keys.items())
    assert out_a.infotexts == [(t + suffix) if t else suffix[2:] for t in out_b.infotexts], label
    assert vpred_keys(out_a) == expect_keys, label
    assert p_a.sampler_noise_scheduler_override is None, label
    assert with_ext.errors.reported == [], label
    assert without.errors.reported == [], label
    return out_a


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_eps_checkpoint_is_bit_identical_in_every_mode(make_webui, sampler):
    """Every generation shape with one sampler; the same two stand-ins run the scenarios one after the other."""
    with_ext, without = pair(make_webui, models=[EPS_SD1])
    for name, scenario in SCENARIOS.items():
        kind, kwargs = _split(scenario)
        assert_same_run(with_ext, without, kind, label=f"{sampler}: {name}", sampler_name=sampler, **kwargs)


def test_eps_checkpoint_is_bit_identical_with_settings_that_do_not_apply(make_webui):
    with_ext, without = pair(make_webui, models=[EPS_SD1])
    for name, args in EPS_NEUTRAL_ARGS.items():
        assert_same_run(
            with_ext, without, script_args=args, label=name, prompt="a cat", steps=4, sampler_name="Euler a"
        )
        assert_same_run(
            with_ext,
            without,
            script_args=args,
            label=f"{name}: hires",
            prompt="a cat",
            steps=4,
            enable_hr=True,
            hr_second_pass_steps=3,
            sampler_name="DPM++ 2M",
        )


BUILTIN_OPTIONS = {
    "zero-terminal-snr": {"sd_noise_schedule": "Zero Terminal SNR"},
    "downcast": {"use_downcasted_alpha_bar": True},
    "both": {"sd_noise_schedule": "Zero Terminal SNR", "use_downcasted_alpha_bar": True},
}


@pytest.mark.parametrize("options", BUILTIN_OPTIONS.values(), ids=list(BUILTIN_OPTIONS))
def test_eps_checkpoint_with_builtin_schedule_options_is_bit_identical(make_webui, options):
    with_ext, without = pair(make_webui, models=[EPS_SD1])
    # twice per mode: from the second job on, the model's table is the one the previous job left, which img2img
    # uses because it builds its sampler before the per-batch reset
    for label, kind, prompt in [("t1", "txt2img", "a cat"), ("i1", "img2img", "a cat"), ("i2", "img2img", "a dog")]:
        out = assert_same_run(with_ext, without, kind, label=label, prompt=prompt, steps=4, override_settings=options)
        if "sd_noise_schedule" in options:
            assert "Noise Schedule: Zero Terminal SNR" in out.infotexts[0]  # the WebUI's own option did act


def test_eps_sdxl_with_only_a_ztsnr_key_is_bit_identical(make_webui):
    """A ``ztsnr`` marker without ``v_pred``: Auto ZTSNR never acts on an eps checkpoint."""
    model = ("ztsnronlyxl", {"family": "SDXL", "keys": ("ztsnr",)})
    with_ext, without = pair(make_webui, models=[model])
    assert_same_run(with_ext, without, prompt="a cat", steps=4)


def test_sdxl_v_keys_with_prediction_forced_to_eps_is_bit_identical(make_webui):
    with_ext, without = pair(make_webui, models=[V_SDXL_KEYS])
    assert_same_run(
        with_ext,
        without,
        script_args=[True, "eps", "Auto", "Trailing", 0.7],
        expect_keys={"VPred prediction": "eps"},  # pasting must not restore Auto (which samples it as v)
        prompt="a cat",
        steps=4,
    )
    assert with_ext.shared.sd_model.parameterization == "eps"


@pytest.mark.parametrize("sampler", [pytest.param("DDIM", marks=SKIP_IF_TIMESTEP_SUPPORTED), "LCM"])
def test_v_checkpoint_with_unsupported_sampler_runs_unchanged(make_webui, sampler):
    """Timestep samplers and LCM are not handled: exactly the WebUI's own run, and no VPred infotext."""
    with_ext, without = pair(make_webui, models=[V_SD1])
    for kind in ("txt2img", "img2img"):
        assert_same_run(
            with_ext, without, kind, label=kind, prompt="a cat AND a dog:0.5", steps=5, sampler_name=sampler
        )


def test_v_checkpoint_disabled_is_bit_identical(make_webui):
    with_ext, without = pair(make_webui, models=[V_SD1, V_SDXL_KEYS])
    args = [False, "Auto", "Auto", "Trailing", 0.7]
    override = {"sd_model_checkpoint": V_SDXL_KEYS[0]}
    for kind, extra in [("txt2img", {"enable_hr": True}), ("img2img", {})]:
        disabled = {"VPred": "disabled"}
        assert_same_run(
            with_ext,
            without,
            kind,
            script_args=args,
            label=kind,
            expect_keys=disabled,
            prompt="a cat",
            steps=4,
            **extra,
        )
        assert_same_run(
            with_ext,
            without,
            kind,
            script_args=args,
            label=f"{kind} sdxl",
            expect_keys=disabled,
            prompt="a cat",
            steps=4,
            override_settings=override,
        )


def test_model_switch_v_eps_v(make_webui):
    """v -> eps -> v through ``override_settings``: the eps run is the WebUI's own, the v runs are repeatable."""
    models = [V_SD1, EPS_SD1, EPS_SDXL]
    with_ext, without = pair(make_webui, models=models)
    v_model = with_ext.shared.sd_model

    _, first_v = with_ext.run("txt2img", prompt="a cat", steps=4)
    assert vpred_keys(first_v)["VPred prediction"] == "v-prediction (auto)"
    for eps_name in (EPS_SD1[0], EPS_SDXL[0]):
        assert_same_run(
            with_ext, without, prompt="a cat", steps=4, override_settings={"sd_model_checkpoint": eps_name}
        )
        assert with_ext.shared.sd_model.sd_checkpoint_info.name == eps_name
    _, second_v = with_ext.run("txt2img", prompt="a cat", steps=4)
    assert with_ext.shared.sd_model is v_model
    assert torch.equal(images(first_v), images(second_v))
    assert first_v.infotexts == second_v.infotexts
