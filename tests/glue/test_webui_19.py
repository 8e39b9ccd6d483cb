"""WebUI 1.9.x has no ``process_before_every_sampling`` hook (it arrived in 1.10.0, commit 17e84615): the script then
emulates it around ``p.sample``. Simulated here by hiding the hook from the stand-in's runner, as 1.9's processing
never calls it. (Checked live on a real v1.9.4 too: 24 of the 25 live tests pass; DDIM CFG++ does not exist there.)"""

from __future__ import annotations

import pytest

from lib_vpred.schedule import spaced_timesteps


@pytest.fixture
def webui_19(make_webui, monkeypatch):
    w = make_webui(True)
    monkeypatch.setattr(w.script_module, "_HAS_EVERY_SAMPLING_HOOK", False)
    for runner in w.runners.values():
        runner.process_before_every_sampling = lambda p, **kwargs: None  # 1.9's processing has no such call
    return w


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [
        ("txt2img", {}),
        ("txt2img", {"enable_hr": True, "hr_second_pass_steps": 3, "denoising_strength": 0.5}),
        ("img2img", {"denoising_strength": 1.0}),
    ],
)
def test_plan_is_applied_without_the_1_10_hook(webui_19, kind, kwargs):
    from modules import sd_samplers

    w = webui_19
    model = w.add_model("fluffy-vpred", parameterization="v", yaml_v=True)
    create_sampler = sd_samplers.create_sampler
    _, out = w.run(kind, prompt="a cat", steps=4, **kwargs)
    assert out.extra_generation_params["VPred ZTSNR"] == "on (auto)"
    assert out.extra_generation_params["VPred spacing"] == "trailing (auto)"
    first = [float(c[0]) for c in model.calls[:4]]
    assert first == [float(t) for t in spaced_timesteps(4, "trailing")]  # the first pass: trailing, from t=999
    assert sd_samplers.create_sampler is create_sampler  # the temporary wrapper is gone again
    assert w.errors.reported == []


def test_emulation_is_restored_after_an_exception(webui_19):
    from modules import sd_samplers

    w = webui_19
    model = w.add_model("fluffy-vpred", parameterization="v", yaml_v=True)
    create_sampler = sd_samplers.create_sampler

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    model.apply_model = broken
    with pytest.raises(RuntimeError, match="boom"):
        w.run("txt2img", prompt="a cat", steps=4)
    assert sd_samplers.create_sampler is create_sampler
