"""CFG rescale in place (issue item 3): every step's result against an independent recomputation.

Per step the test captures the CFG denoiser's inputs (``x_in``, ``sigma_in`` through an ``on_cfg_denoiser`` callback),
the WebUI's ``combine_denoised`` inputs (``x_out``, ``conds_list``, ``cond_scale`` through a class-level spy) and what
the denoiser returns (``on_cfg_after_cfg``). The expected value is computed in float64 by the WebUI's CFG formula,
k-diffusion's v scalings and diffusers' ``rescale_noise_cfg`` (``test_support.expected_rescaled``).
"""

from __future__ import annotations

import pytest
import torch

from tests.glue.test_support import (
    V_SD1,
    Recorder,
    ReferencePipeline,
    expected_rescaled,
    images,
    infotext,
    new_webui,
    rescale_noise_cfg,
    spy_combine,
    vpred_keys,
    webui_combine,
)

CASES = {
    "single": {"prompt": "a cat"},
    "batch2-different-prompts": {"prompt": ["a cat", "a bird"], "batch_size": 2},
    "and-prompt": {"prompt": "a cat AND a dog:0.5"},
    "batch2-mixed-and": {"prompt": ["a cat AND a dog:0.5", "a bird AND a cow:-0.3"], "batch_size": 2},
    "heun": {"prompt": "a cat AND a dog:0.5", "sampler_name": "Heun"},
    "dpmpp-2m-cfg3": {"prompt": ["a cat", "a bird"], "batch_size": 2, "sampler_name": "DPM++ 2M", "cfg_scale": 3.0},
    "img2img": ("img2img", {"prompt": "a cat AND a dog:0.5", "denoising_strength": 0.8}),
    "hires": {"prompt": "a cat", "enable_hr": True, "hr_second_pass_steps": 3},
}


def _split(case):
    return case if isinstance(case, tuple) else ("txt2img", case)


def _check_steps(rec, calls, phi, *, skipped=()):
    """Every step: the denoised returned equals the independent recomputation. Returns the per-step changes."""
    assert len(calls) == len(rec.steps) > 0
    changes = []
    for i, (step, call) in enumerate(zip(rec.steps, calls, strict=True)):
        batch = len(call["conds_list"])
        assert call["uncond_rows"] == batch
        plain64 = webui_combine(call["x_out"], call["conds_list"], batch, call["cond_scale"])
        torch.testing.assert_close(call["plain"].double(), plain64, rtol=1e-6, atol=1e-6)
        got = step["denoised"]
        if i in skipped:  # skip-uncond step: combine at scale 1 with a fake uncond, rescale is a no-op
            assert call["cond_scale"] == 1.0
            assert torch.equal(got, call["plain"])
            changes.append(0.0)
            continue
        expected = expected_rescaled(
            step["x"], step["sigma"], call["x_out"], call["conds_list"], call["cond_scale"], phi
        )
        scale = max(1.0, float(expected.abs().max()))
        torch.testing.assert_close(got.double(), expected, rtol=2e-5, atol=2e-5 * scale)
        changes.append(float((got - call["plain"]).abs().max()))
    return changes


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_cfg_rescale_equals_independent_v_space_recomputation(make_webui, monkeypatch, case):
    w = new_webui(make_webui, True, models=[V_SD1])
    calls = spy_combine(monkeypatch, w)
    rec = Recorder(w)
    kind, kwargs = _split(CASES[case])
    _, out = w.run(kind, steps=4, script_args=[True, "Auto", "Auto", "Trailing", 0.7], **kwargs)
    changes = _check_steps(rec, calls, 0.7)
    assert max(changes) > 1e-3, "the rescale must actually change the guided prediction"
    assert vpred_keys(out)["VPred CFG rescale"] == "0.7"
    assert w.errors.reported == []


def test_cfg_rescale_is_not_done_in_x0_space(make_webui, monkeypatch):
    """The same diffusers rescale applied to the denoised (x0) predictions would give a different result."""
    w = new_webui(make_webui, True, models=[V_SD1])
    calls = spy_combine(monkeypatch, w)
    rec = Recorder(w)
    w.run("txt2img", steps=4, prompt=["a cat", "a bird"], batch_size=2)
    _check_steps(rec, calls, 0.7)
    differs = []
    for step, call in zip(rec.steps, calls, strict=True):
        batch = len(call["conds_list"])
        cfg = webui_combine(call["x_out"], call["conds_list"], batch, call["cond_scale"])
        pos = webui_combine(call["x_out"], call["conds_list"], batch, 1.0)
        x0_space = rescale_noise_cfg(cfg, pos, 0.7)
        differs.append(float((x0_space - step["denoised"].double()).abs().max()))
    assert max(differs) > 1e-2


def test_phi_zero_is_plain_cfg_with_ztsnr_and_trailing(make_webui, monkeypatch):
    """phi = 0: every step returns the WebUI's combine bit for bit, and the whole run equals an independent ZTSNR +
    trailing pipeline (no CFG rescale) on the stand-in without the extension."""
    w = new_webui(make_webui, True, models=[V_SD1])
    calls = spy_combine(monkeypatch, w)
    rec = Recorder(w)
    kwargs = {"prompt": ["a cat AND a dog:0.5", "a bird"], "batch_size": 2, "steps": 4}
    _, out = w.run("txt2img", script_args=[True, "Auto", "Auto", "Trailing", 0.0], **kwargs)
    assert len(calls) == len(rec.steps) == 4
    for step, call in zip(rec.steps, calls, strict=True):
        assert torch.equal(step["denoised"], call["plain"])
    keys = vpred_keys(out)
    assert keys["VPred ZTSNR"] == "on (auto)"
    assert keys["VPred spacing"] == "trailing"
    assert keys["VPred CFG rescale"] == "0.0"

    reference = new_webui(make_webui, False, models=[V_SD1])
    ReferencePipeline(reference, phi=0.0)
    _, ref_out = reference.run("txt2img", **kwargs)
    assert torch.equal(images(out), images(ref_out))
    assert len(reference.shared.sd_model.calls) == len(w.shared.sd_model.calls)
    assert all(
        torch.equal(a, b) for a, b in zip(w.shared.sd_model.calls, reference.shared.sd_model.calls, strict=True)
    )


@pytest.mark.parametrize("kind", ["txt2img", "img2img"])
def test_whole_run_matches_an_independent_pipeline_with_rescale(make_webui, kind):
    kwargs = {"prompt": ["a cat AND a dog:0.5", "a bird"], "batch_size": 2, "steps": 4}
    w = new_webui(make_webui, True, models=[V_SD1])
    _, out = w.run(kind, script_args=[True, "Auto", "Auto", "Trailing", 0.6], **kwargs)
    _, out_phi0 = w.run(kind, script_args=[True, "Auto", "Auto", "Trailing", 0.0], **kwargs)
    reference = new_webui(make_webui, False, models=[V_SD1])
    ReferencePipeline(reference, phi=0.6)
    _, ref_out = reference.run(kind, **kwargs)
    got, ref, plain = images(out), images(ref_out), images(out_phi0)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert float((got - plain).abs().max()) > 1e-2  # and the rescale matters for the output


def test_skip_early_cond_steps_are_left_alone(make_webui, monkeypatch):
    w = new_webui(make_webui, True, models=[V_SD1])
    calls = spy_combine(monkeypatch, w)
    rec = Recorder(w)
    _, out = w.run(
        "txt2img",
        steps=4,
        prompt=["a cat AND a dog:0.5", "a bird"],
        batch_size=2,
        override_settings={"skip_early_cond": 0.5},
    )
    # step / total_steps <= 0.5 for steps 0, 1, 2 of 4: the uncond is skipped there
    assert [c["cond_scale"] for c in calls] == [1.0, 1.0, 1.0, 7.0]
    changes = _check_steps(rec, calls, 0.7, skipped={0, 1, 2})
    assert changes[3] > 1e-3
    assert infotext(out)["Skip Early CFG"] == "0.5"
    assert w.errors.reported == []
    assert torch.isfinite(images(out)).all()
