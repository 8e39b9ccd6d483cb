"""Exceptions, interrupts and checkpoint changes (issue items 6 and 7): nothing global may change, and the next
generation must equal a fresh stand-in's result bit for bit."""

from __future__ import annotations

import os

import pytest
import torch

from tests.glue.fakemodel import write_checkpoint
from tests.glue.test_support import (
    EPS_SDXL,
    TIMESTEP_SUPPORTED,
    V_SD1,
    V_SDXL_KEYS,
    GlobalState,
    Recorder,
    images,
    kdiffusion_sigmas,
    new_webui,
    vpred_keys,
    ztsnr_sigmas,
)

MODES = {
    "txt2img": ("txt2img", {"prompt": ["a cat", "a dog AND a bird:0.5"], "batch_size": 2, "steps": 4}),
    "hires": ("txt2img", {"prompt": "a cat", "steps": 4, "enable_hr": True, "hr_second_pass_steps": 3}),
    "img2img": ("img2img", {"prompt": "a cat", "steps": 5, "denoising_strength": 0.8, "n_iter": 2}),
}


def _fresh_results(make_webui, models):
    """Every mode's result on a fresh stand-in with the extension: what a run after a failure must equal."""
    fresh = new_webui(make_webui, True, models=models)
    return {mode: fresh.run(kind, **kwargs)[1] for mode, (kind, kwargs) in MODES.items()}


def _assert_equal_runs(got, expected, mode):
    assert torch.equal(images(got), images(expected)), mode
    assert got.infotexts == expected.infotexts, mode
    assert vpred_keys(got)["VPred prediction"] == "v-prediction (auto)", mode


@pytest.mark.parametrize("model_spec", [V_SD1, V_SDXL_KEYS], ids=["sd1-yaml", "sdxl-keys"])
def test_exception_in_the_model_mid_sampling_leaves_nothing_behind(make_webui, model_spec):
    """In every mode: the model raises on its 3rd call; afterwards nothing global changed and the next job equals a
    fresh stand-in's (the modes run one after the other on the same stand-in)."""
    w = new_webui(make_webui, True, models=[model_spec])
    model = w.shared.sd_model
    state = GlobalState(w)
    expected = _fresh_results(make_webui, [model_spec])
    real_apply = model.apply_model
    for mode, (kind, kwargs) in MODES.items():
        count = {"n": 0}

        def failing(x, t, cond, _count=count):
            _count["n"] += 1
            if _count["n"] == 3:
                raise RuntimeError("boom on the 3rd call")
            return real_apply(x, t, cond)

        model.apply_model = failing  # instance attribute, removed below
        with pytest.raises(RuntimeError, match="boom"):
            w.run(kind, **kwargs)
        del model.apply_model
        assert count["n"] == 3, mode
        state.assert_unchanged()
        _, again = w.run(kind, **kwargs)
        _assert_equal_runs(again, expected[mode], mode)


def test_interrupt_mid_sampling_leaves_nothing_behind(make_webui):
    w = new_webui(make_webui, True, models=[V_SD1])
    model = w.shared.sd_model
    rec = Recorder(w)
    state = GlobalState(w)
    expected = _fresh_results(make_webui, [V_SD1])
    callbacks = w.mods.script_callbacks.callback_map["callbacks_cfg_after_cfg"]
    for mode, (kind, kwargs) in MODES.items():
        rec.steps.clear()
        model.calls.clear()

        def interrupt(params):
            if len(rec.steps) == 2:
                w.shared.state.interrupted = True

        w.mods.script_callbacks.on_cfg_after_cfg(interrupt)
        p, out = w.run(kind, **kwargs)
        assert len(model.calls) == 2, mode  # the 3rd forward raised InterruptedException, caught by launch_sampling
        assert len(out.images) >= 1, mode
        assert p.sampler_noise_scheduler_override is None, mode  # postprocess ran
        assert vpred_keys(out)["VPred ZTSNR"] == "on (auto)", mode

        # what the WebUI does before every job (shared.state.begin): reset the flag; drop the test's callback
        w.shared.state.interrupted = False
        callbacks[:] = [c for c in callbacks if c.callback is not interrupt]
        state.assert_unchanged()
        _, again = w.run(kind, **kwargs)
        _assert_equal_runs(again, expected[mode], mode)


def _bump_mtime(path):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))


def test_detection_follows_a_rewritten_checkpoint_file(make_webui):
    """Detection is cached per file: rewriting the checkpoint (now with v_pred/ztsnr keys) is seen by the next job."""
    w = new_webui(make_webui, True, models=[EPS_SDXL])
    model = w.shared.sd_model
    rec = Recorder(w)
    _, before = w.run("txt2img", prompt="a cat", steps=4)
    assert vpred_keys(before) == {}
    assert {s["wrapper_type"] for s in rec.steps} == {"CompVisDenoiser"}

    path = write_checkpoint(w.tmp, EPS_SDXL[0], family="SDXL", keys=("v_pred", "ztsnr"))
    assert str(path) == model.sd_checkpoint_info.filename
    _bump_mtime(path)
    rec.steps.clear()
    _, after = w.run("txt2img", prompt="a cat", steps=4)
    assert vpred_keys(after)["VPred prediction"] == "v-prediction (auto)"
    assert vpred_keys(after)["VPred ZTSNR"] == "on (auto)"
    assert {s["wrapper_type"] for s in rec.steps} == {"CompVisVDenoiser"}
    assert all(torch.equal(s["sigmas"], ztsnr_sigmas(model.alphas_cumprod_original)) for s in rec.steps)


def test_detection_follows_a_yaml_whose_ztsnr_marker_appears(make_webui):
    """Control for the test below: a YAML with ``ztsnr: false`` from the start turns Auto ZTSNR off."""
    w = new_webui(make_webui, True, models=[])
    model = w.add_model(V_SD1[0], **V_SD1[1])
    with open(model.used_config, "a") as f:
        f.write("ztsnr: false\n")
    rec = Recorder(w)
    _, out = w.run("txt2img", prompt="a cat", steps=4)
    assert vpred_keys(out)["VPred ZTSNR"] == "off (auto)"
    assert all(torch.equal(s["sigmas"], kdiffusion_sigmas(model.alphas_cumprod)) for s in rec.steps)


def test_detection_follows_an_edited_yaml(make_webui):
    w = new_webui(make_webui, True, models=[V_SD1])
    model = w.shared.sd_model
    _, before = w.run("txt2img", prompt="a cat", steps=4)
    assert vpred_keys(before)["VPred ZTSNR"] == "on (auto)"

    with open(model.used_config, "a") as f:
        f.write("ztsnr: false\n")
    _bump_mtime(model.used_config)
    rec = Recorder(w)
    _, after = w.run("txt2img", prompt="a cat", steps=4)
    assert vpred_keys(after)["VPred ZTSNR"] == "off (auto)"
    assert all(torch.equal(s["sigmas"], kdiffusion_sigmas(model.alphas_cumprod)) for s in rec.steps)


def test_switching_between_two_v_checkpoints_redetects_each(make_webui):
    """SD1 v (YAML, ZTSNR assumed) <-> SDXL v (keys): each job follows the checkpoint it actually runs."""
    w = new_webui(make_webui, True, models=[V_SD1, V_SDXL_KEYS])
    sdxl = w.models[V_SDXL_KEYS[0]]
    rec = Recorder(w)
    state = GlobalState(w)
    _, first = w.run("txt2img", prompt="a cat", steps=4)
    _, xl = w.run("txt2img", prompt="a cat", steps=4, override_settings={"sd_model_checkpoint": V_SDXL_KEYS[0]})
    _, back = w.run("txt2img", prompt="a cat", steps=4)
    assert torch.equal(images(first), images(back))
    xl_steps = [s for s in rec.steps if s["model"] is sdxl]
    assert len(xl_steps) == 4
    assert all(s["wrapper_type"] == "CompVisVDenoiser" and s["parameterization"] == "eps" for s in xl_steps)
    assert vpred_keys(xl)["VPred ZTSNR"] == "on (auto)"
    state.assert_unchanged()


@pytest.mark.skipif(not TIMESTEP_SUPPORTED, reason="timestep samplers are not handled: nothing to scope")
@pytest.mark.parametrize("sampler", ["DDIM", "UniPC"])
def test_timestep_sampler_table_swap_is_scoped_through_failures_and_interrupts(make_webui, sampler):
    """The timestep family swaps the model's alphas_cumprod for the duration of the sampler call: after a normal
    job, an exception on the 3rd model call and an interrupt, nothing global is changed and the next job equals a
    fresh stand-in's."""
    modes = {name: (kind, {**kwargs, "sampler_name": sampler}) for name, (kind, kwargs) in MODES.items()}
    modes["hires"][1]["hr_sampler_name"] = sampler
    w = new_webui(make_webui, True, models=[V_SD1])
    model = w.shared.sd_model
    rec = Recorder(w)
    state = GlobalState(w)
    fresh = new_webui(make_webui, True, models=[V_SD1])
    expected = {mode: fresh.run(kind, **kwargs)[1] for mode, (kind, kwargs) in modes.items()}
    real_apply = model.apply_model
    callbacks = w.mods.script_callbacks.callback_map["callbacks_cfg_after_cfg"]
    for mode, (kind, kwargs) in modes.items():
        _, out = w.run(kind, **kwargs)
        assert "VPred ZTSNR" in vpred_keys(out), mode
        state.assert_unchanged()

        count = {"n": 0}

        def failing(x, t, cond, _count=count):
            _count["n"] += 1
            if _count["n"] == 3:
                raise RuntimeError("boom on the 3rd call")
            return real_apply(x, t, cond)

        model.apply_model = failing
        with pytest.raises(RuntimeError, match="boom"):
            w.run(kind, **kwargs)
        del model.apply_model
        state.assert_unchanged()

        rec.steps.clear()

        def interrupt(params):
            if len(rec.steps) == 2:
                w.shared.state.interrupted = True

        w.mods.script_callbacks.on_cfg_after_cfg(interrupt)
        w.run(kind, **kwargs)
        w.shared.state.interrupted = False
        callbacks[:] = [c for c in callbacks if c.callback is not interrupt]
        state.assert_unchanged()

        _, again = w.run(kind, **kwargs)
        assert torch.equal(images(again), images(expected[mode])), mode
        assert again.infotexts == expected[mode].infotexts, mode
