"""v-prediction checkpoints: wrapper, ZTSNR sigma table, trailing timesteps, infotext, per-pass scope (items 2, 4, 8, 9).

Expected sigmas and timesteps are computed independently in ``test_support`` (Algorithm 1 in float64, diffusers'
trailing formula, k-diffusion's sampler step structure), never taken from ``lib_vpred``.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from lib_vpred.schedule import spaced_timesteps
from tests.glue.test_support import (
    EPS_SD1,
    SIGMA_MAX_SD,
    SIGMA_MAX_ZTSNR,
    SKIP_IF_TIMESTEP_SUPPORTED,
    V_SD1,
    V_SDXL_KEYS,
    GlobalState,
    Recorder,
    call_timesteps,
    images,
    infotext,
    kdiffusion_sigmas,
    new_webui,
    pair,
    spy_combine,
    trailing_timesteps,
    vpred_keys,
    ztsnr_sigmas,
)

DEFAULT_INFOTEXT = {
    "VPred prediction": "v-prediction (auto)",
    "VPred ZTSNR": "on (auto)",
    "VPred spacing": "trailing (auto)",
    "VPred CFG rescale": "0.7",
}


def _approx(values, expected, atol=1e-3):
    assert len(values) == len(expected), (values, expected)
    assert all(abs(a - b) <= atol for a, b in zip(values, expected, strict=True)), (values, expected)


@pytest.mark.parametrize("steps", [1, 3, 4, 6, 7, 20, 30])
def test_trailing_reference_matches_spaced_timesteps(steps):
    assert trailing_timesteps(steps) == spaced_timesteps(steps, "trailing").tolist()
    assert trailing_timesteps(steps)[0] == 999


def _expected_sigma_calls(sampler: str, table: torch.Tensor, steps: int) -> tuple[list[float], list[float]]:
    """(sigma of every model call, timestep of the calls at schedule points) for k-diffusion's step structure."""
    # DPM2 discards the penultimate sigma: trailing(steps + 1) without its smallest sigma
    ts = trailing_timesteps(steps + 1)[:-1] if sampler == "DPM2" else trailing_timesteps(steps)
    s = [float(table[t]) for t in ts]
    if sampler == "Heun":
        # Under ZTSNR the extension takes the first step (from sigma_max) with Euler (lib_vpred.sampling), then Heun:
        # corrector at the next sigma, except for the last step to sigma 0.
        calls = [s[0], s[1], *[v for x in s[2:] for v in (x, x)]]
        return calls, [float(ts[0]), float(ts[1]), *[v for x in ts[2:] for v in (x, x)]]
    if sampler == "DPM2":  # midpoint in log sigma, except for the last step
        calls = []
        for a, b in itertools.pairwise(s):
            calls += [a, (a * b) ** 0.5]
        return [*calls, s[-1]], [float(t) for t in ts]
    return s, [float(t) for t in ts]


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "Heun", "DPM2"])
def test_v_checkpoint_defaults_sample_v_with_ztsnr_trailing_and_leave_nothing_behind(make_webui, sampler):
    w = new_webui(make_webui, True, models=[V_SD1])
    model = w.shared.sd_model
    rec = Recorder(w)
    state = GlobalState(w)
    p, out = w.run("txt2img", prompt="a cat", steps=4, sampler_name=sampler)

    table = ztsnr_sigmas(model.alphas_cumprod_original)
    assert float(table[-1]) == pytest.approx(SIGMA_MAX_ZTSNR, rel=1e-6)
    assert {s["wrapper_type"] for s in rec.steps} == {"CompVisVDenoiser"}
    for step in rec.steps:
        assert torch.equal(step["sigmas"], table)
        assert callable(step["override"])  # the trailing schedule is installed for the pass
    expected_sigmas, schedule_ts = _expected_sigma_calls(sampler, table, 4)
    got_sigmas = [float(s["sigma"][-1]) for s in rec.steps]
    assert got_sigmas == pytest.approx(expected_sigmas, rel=1e-5)
    ts = call_timesteps(model)
    assert ts[0] == pytest.approx(999, abs=1e-3)
    if sampler == "Heun":
        _approx(ts, schedule_ts)
    elif sampler == "DPM2":
        _approx(ts[::2], schedule_ts)
        assert all(a > m > b for a, m, b in zip(ts[::2], ts[1::2], ts[2::2], strict=False))
    else:
        _approx(ts, spaced_timesteps(4, "trailing").tolist())

    assert vpred_keys(out) == DEFAULT_INFOTEXT
    assert p.sampler_noise_scheduler_override is None
    assert w.errors.reported == []
    state.assert_unchanged()


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "LMS"])
def test_auto_spacing_gives_dpmpp_2m_and_lms_exponential_sigmas_from_sigma_max(make_webui, sampler):
    """Timestep spacing Auto (the default) picks exponential for DPM++ 2M and LMS (README "Benchmarks"): one model call
    per step at k-diffusion's own ``get_sigmas_exponential`` over the ZTSNR table (the WebUI's Exponential schedule
    type, independent reference), first at sigma_max (t = 999), last at sigma_min; recorded as ``exponential (auto)``.
    An explicit Trailing still gives trailing."""
    import k_diffusion.sampling

    w = new_webui(make_webui, True, models=[V_SD1])
    model = w.shared.sd_model
    rec = Recorder(w)
    state = GlobalState(w)
    p, out = w.run("txt2img", prompt="a cat", steps=6, sampler_name=sampler, scheduler="Karras")
    table = ztsnr_sigmas(model.alphas_cumprod_original)
    want = k_diffusion.sampling.get_sigmas_exponential(6, float(table[0]), float(table[-1]))[:-1]
    got = [float(s["sigma"][-1]) for s in rec.steps]
    assert got == pytest.approx(want.tolist(), rel=1e-5)
    assert call_timesteps(model)[0] == pytest.approx(999, abs=1e-3)
    assert vpred_keys(out) == {**DEFAULT_INFOTEXT, "VPred spacing": "exponential (auto)"}
    assert p.sampler_noise_scheduler_override is None
    assert w.errors.reported == []
    state.assert_unchanged()

    before = len(rec.steps)
    _, out = w.run(
        "txt2img", prompt="a cat", steps=6, sampler_name=sampler, script_args=[True, "Auto", "Auto", "Trailing", 0.7]
    )
    got = [float(s["sigma"][-1]) for s in rec.steps[before:]]
    assert got == pytest.approx([float(table[t]) for t in trailing_timesteps(6)], rel=1e-5)
    assert vpred_keys(out)["VPred spacing"] == "trailing"
    state.assert_unchanged()


def test_auto_gives_img2img_and_hires_passes_trailing_and_the_infotext_says_so(make_webui):
    """Auto picks exponential only for passes from pure noise: a hires pass (and img2img) slices its schedule by the
    denoising strength, and exponential steps crowd at high noise (strength 0.7 of 5 virtual steps would start at
    sigma 84), so it gets trailing: steps 4 at strength 0.7 -> 5 virtual steps, t_enc 3, trailing(5)[1:] =
    t 799, 599, 399, 199. The first pass (DPM++ 2M) keeps ``VPred spacing: exponential (auto)``; the hires pass's
    differing spacing is ``VPred hires spacing: trailing (auto)``."""
    import k_diffusion.sampling

    w = new_webui(make_webui, True, models=[V_SD1])
    model = w.shared.sd_model
    rec = Recorder(w)
    state = GlobalState(w)
    p, out = w.run(
        "txt2img",
        prompt="a cat",
        steps=4,
        sampler_name="DPM++ 2M",
        enable_hr=True,
        hr_second_pass_steps=4,
        denoising_strength=0.7,
        hr_sampler_name="DPM++ 2M",
    )
    table = ztsnr_sigmas(model.alphas_cumprod_original)
    first = [float(s["sigma"][-1]) for s in rec.steps if not s["is_hr_pass"]]
    second = [float(s["sigma"][-1]) for s in rec.steps if s["is_hr_pass"]]
    want = k_diffusion.sampling.get_sigmas_exponential(4, float(table[0]), float(table[-1]))[:-1]
    assert first == pytest.approx(want.tolist(), rel=1e-5)
    assert second == [float(table[t]) for t in trailing_timesteps(5)[1:]]
    assert vpred_keys(out) == {
        **DEFAULT_INFOTEXT,
        "VPred spacing": "exponential (auto)",
        "VPred hires spacing": "trailing (auto)",
    }
    assert p.sampler_noise_scheduler_override is None

    before = len(rec.steps)
    _, img = w.run("img2img", prompt="a cat", steps=4, denoising_strength=0.5, sampler_name="DPM++ 2M", seed=7)
    assert [float(s["sigma"][-1]) for s in rec.steps[before:]] == [float(table[t]) for t in trailing_timesteps(4)[1:]]
    assert vpred_keys(img) == DEFAULT_INFOTEXT
    state.assert_unchanged()


def test_v_checkpoint_n_iter_and_batch_each_get_the_plan(make_webui):
    w = new_webui(make_webui, True, models=[V_SD1])
    rec = Recorder(w)
    state = GlobalState(w)
    _, out = w.run("txt2img", prompt=["a cat", "a dog", "a bird", "a cow"], steps=4, batch_size=2, n_iter=2)
    table = ztsnr_sigmas(w.shared.sd_model.alphas_cumprod_original)
    assert len(rec.samplers()) == 2  # one sampler per batch
    assert len(rec.steps) == 8
    for step in rec.steps:
        assert step["wrapper_type"] == "CompVisVDenoiser"
        assert torch.equal(step["sigmas"], table)
    assert [round(float(s["sigma"][-1]), 3) for s in rec.steps] == [
        round(float(table[t]), 3) for t in trailing_timesteps(4) * 2
    ]
    assert len(out.images) == 4
    state.assert_unchanged()


@pytest.mark.parametrize("n_iter", [1, 2])
def test_img2img_first_sigma_comes_from_the_ztsnr_trailing_table(make_webui, n_iter):
    w = new_webui(make_webui, True, models=[V_SD1])
    model = w.shared.sd_model
    rec = Recorder(w)
    state = GlobalState(w)
    p, out = w.run("img2img", prompt="a cat", steps=4, denoising_strength=0.5, n_iter=n_iter, seed=7)
    table = ztsnr_sigmas(model.alphas_cumprod_original)
    # steps 4, strength 0.5 -> t_enc 2: sigmas[4 - 2 - 1:] of trailing(4) = t 749, 499, 249, then 0
    expected_ts = trailing_timesteps(4)[1:]
    assert len(rec.steps) == 3 * n_iter
    for batch in range(n_iter):
        first = rec.steps[3 * batch]
        assert torch.equal(first["sigma"], table[expected_ts[0]].repeat(2))
        noise = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(7 + batch))
        init = p.init_latent_source[0]
        torch.testing.assert_close(first["x"][-1], init + noise * table[expected_ts[0]], rtol=0, atol=0)
        assert [float(s["sigma"][-1]) for s in rec.steps[3 * batch : 3 * batch + 3]] == [
            float(table[t]) for t in expected_ts
        ]
    _approx(call_timesteps(model), [float(t) for t in expected_ts] * n_iter)
    assert vpred_keys(out) == DEFAULT_INFOTEXT
    assert p.sampler_noise_scheduler_override is None
    state.assert_unchanged()


def test_hires_fix_both_passes_get_the_plan(make_webui):
    w = new_webui(make_webui, True, models=[V_SD1])
    model = w.shared.sd_model
    rec = Recorder(w)
    state = GlobalState(w)
    script = w.runners[False].alwayson_scripts[0]
    original = script.process_before_every_sampling
    seen = []

    def counting(p, *args, **kwargs):
        seen.append(p.sampler)
        return original(p, *args, **kwargs)

    script.process_before_every_sampling = counting  # instance attribute: this runner's script only
    p, out = w.run(
        "txt2img",
        prompt="a cat",
        steps=4,
        enable_hr=True,
        hr_second_pass_steps=4,
        denoising_strength=0.7,
        hr_sampler_name="Euler a",
    )
    assert len(seen) == 2
    assert seen[0] is not seen[1]
    assert rec.samplers() == seen

    table = ztsnr_sigmas(model.alphas_cumprod_original)
    first = [s for s in rec.steps if not s["is_hr_pass"]]
    second = [s for s in rec.steps if s["is_hr_pass"]]
    for step in rec.steps:
        assert step["wrapper_type"] == "CompVisVDenoiser"
        assert torch.equal(step["sigmas"], table)
        assert callable(step["override"])
    assert [float(s["sigma"][-1]) for s in first] == [float(table[t]) for t in trailing_timesteps(4)]
    # hires: steps = int(4 / 0.7) = 5, t_enc = 3 -> trailing(5)[1:] = t 799, 599, 399, 199
    assert [float(s["sigma"][-1]) for s in second] == [float(table[t]) for t in trailing_timesteps(5)[1:]]
    _approx(call_timesteps(model), [999, 749, 499, 249, 799, 599, 399, 199])
    assert second[0]["x"].shape[-1] == 16
    assert vpred_keys(out) == DEFAULT_INFOTEXT
    assert p.sampler_noise_scheduler_override is None
    state.assert_unchanged()


@pytest.mark.parametrize("second_pass", ["eps-checkpoint", pytest.param("DDIM", marks=SKIP_IF_TIMESTEP_SUPPORTED)])
def test_hires_second_pass_that_the_plan_does_not_cover_is_the_webuis_own(make_webui, monkeypatch, second_pass):
    """A v first pass, then an eps ``hr_checkpoint_name`` or a DDIM ``hr_sampler_name``: the second pass is
    bit-identical to the WebUI without the extension (same second-pass input), the first pass is not."""
    with_ext, without = pair(make_webui, models=[V_SD1, EPS_SD1])
    fixed = torch.linspace(-2, 2, 4 * 8 * 8).reshape(1, 4, 8, 8)
    first_pass_outputs = {}
    for w in (with_ext, without):
        cls = w.mods.processing.StableDiffusionProcessingTxt2Img
        original = cls.sample_hr_pass

        def same_input(self, samples, _original=original, _w=w):
            first_pass_outputs[_w] = samples.clone()
            return _original(self, fixed.clone())

        monkeypatch.setattr(cls, "sample_hr_pass", same_input)
    rec = Recorder(with_ext)
    kwargs = {"prompt": "a cat", "steps": 4, "enable_hr": True, "hr_second_pass_steps": 3}
    if second_pass == "eps-checkpoint":
        kwargs["hr_checkpoint_name"] = EPS_SD1[0]
    else:
        kwargs["hr_sampler_name"] = "DDIM"
    p, out_ext = with_ext.run("txt2img", **kwargs)
    _, out_plain = without.run("txt2img", **kwargs)

    assert not torch.equal(first_pass_outputs[with_ext], first_pass_outputs[without])  # the v pass did change
    assert torch.equal(images(out_ext), images(out_plain))
    hr_model = EPS_SD1[0] if second_pass == "eps-checkpoint" else V_SD1[0]
    calls_ext = with_ext.models[hr_model].calls
    calls_plain = without.models[hr_model].calls
    if second_pass == "DDIM":  # the first (v) pass calls the same model: compare the DDIM part only
        calls_ext, calls_plain = calls_ext[4:], calls_plain[4:]
    assert len(calls_ext) == len(calls_plain) > 0
    assert all(torch.equal(a, b) for a, b in zip(calls_ext, calls_plain, strict=True))
    second = [s for s in rec.steps if s["is_hr_pass"]]
    assert second
    assert all(s["override"] is None for s in second)
    if second_pass == "eps-checkpoint":
        eps_model = with_ext.models[EPS_SD1[0]]
        assert {s["wrapper_type"] for s in second} == {"CompVisDenoiser"}
        assert all(torch.equal(s["sigmas"], kdiffusion_sigmas(eps_model.alphas_cumprod)) for s in second)
    assert vpred_keys(out_ext) == DEFAULT_INFOTEXT  # written by the first pass
    assert p.sampler_noise_scheduler_override is None


def test_sdxl_v_pred_keys_without_yaml_are_sampled_as_v_per_instance(make_webui):
    w = new_webui(make_webui, True, models=[V_SDXL_KEYS])
    model = w.shared.sd_model
    assert model.parameterization == "eps"
    rec = Recorder(w)
    state = GlobalState(w)
    p, out = w.run("txt2img", prompt="a cat", steps=4, enable_hr=True, hr_second_pass_steps=3)

    table = ztsnr_sigmas(model.alphas_cumprod_original)
    assert len(rec.samplers()) == 2
    for step in rec.steps:
        assert step["wrapper_type"] == "CompVisVDenoiser"
        assert step["parameterization"] == "eps"  # the model is never switched, only this pass's wrapper
        assert torch.equal(step["sigmas"], table)
    assert model.parameterization == "eps"
    assert vpred_keys(out) == DEFAULT_INFOTEXT
    assert p.sampler_noise_scheduler_override is None
    state.assert_unchanged()

    # Sampled exactly as the same checkpoint would be if the WebUI itself knew it is v (e.g. with an sgm VScaling YAML)
    w_native = new_webui(make_webui, True, models=[(V_SDXL_KEYS[0], {**V_SDXL_KEYS[1], "parameterization": "v"})])
    _, out_native = w_native.run("txt2img", prompt="a cat", steps=4, enable_hr=True, hr_second_pass_steps=3)
    assert torch.equal(images(out), images(out_native))


#: What a user gets by copying the WebUI's stock sgm SDXL config beside a NoobAI-style checkpoint (the scaling is the
#: only part detection reads): eps scaling, the config default.
SDXL_STOCK_EPS_YAML = """model:
  target: sgm.models.diffusion.DiffusionEngine
  params:
    denoiser_config:
      target: sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser
      params:
        scaling_config:
          target: sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling
"""


def test_sdxl_v_pred_keys_with_an_eps_scaling_yaml_beside_are_sampled_as_v(make_webui):
    """The YAML's ``EpsScaling`` is only the config default: the ``v_pred`` / ``ztsnr`` keys decide, and the image is
    the one the same checkpoint gives without a YAML (tiny-sdxl-vpredkeys on the live tier)."""
    w = new_webui(make_webui, True, models=[V_SDXL_KEYS])
    model = w.shared.sd_model
    yaml_path = w.tmp / f"{V_SDXL_KEYS[0]}.yaml"
    yaml_path.write_text(SDXL_STOCK_EPS_YAML)
    model.used_config = str(yaml_path)  # what the WebUI would have loaded the model with
    rec = Recorder(w)
    _, out = w.run("txt2img", prompt="a cat", steps=4)
    table = ztsnr_sigmas(model.alphas_cumprod_original)
    assert {s["wrapper_type"] for s in rec.steps} == {"CompVisVDenoiser"}
    assert all(torch.equal(s["sigmas"], table) for s in rec.steps)
    assert model.parameterization == "eps"
    assert vpred_keys(out) == DEFAULT_INFOTEXT

    w_bare = new_webui(make_webui, True, models=[V_SDXL_KEYS])
    _, out_bare = w_bare.run("txt2img", prompt="a cat", steps=4)
    assert torch.equal(images(out), images(out_bare))


def test_sdxl_v_pred_key_without_ztsnr_evidence_keeps_the_standard_table(make_webui):
    w = new_webui(make_webui, True, models=[("vonlyxl", {"family": "SDXL", "keys": ("v_pred",)})])
    model = w.shared.sd_model
    rec = Recorder(w)
    _, out = w.run("txt2img", prompt="a cat", steps=4)
    assert {s["wrapper_type"] for s in rec.steps} == {"CompVisVDenoiser"}
    assert all(torch.equal(s["sigmas"], kdiffusion_sigmas(model.alphas_cumprod)) for s in rec.steps)
    assert float(rec.steps[0]["sigma"][0]) == pytest.approx(SIGMA_MAX_SD, rel=1e-5)
    keys = vpred_keys(out)
    assert keys["VPred prediction"] == "v-prediction (auto)"
    assert keys["VPred ZTSNR"] == "off (auto)"
    assert model.parameterization == "eps"


def test_builtin_zero_terminal_snr_option_with_v_checkpoint_is_not_applied_twice(make_webui):
    w = new_webui(make_webui, True, models=[V_SD1])
    model = w.shared.sd_model
    rec = Recorder(w)
    override = {"sd_noise_schedule": "Zero Terminal SNR"}
    p, out = w.run("txt2img", prompt="a cat", steps=4, n_iter=2, override_settings=override)

    builtin = kdiffusion_sigmas(w.sd_models.rescale_zero_terminal_snr_abar(model.alphas_cumprod_original.clone()))
    ours = ztsnr_sigmas(model.alphas_cumprod_original)
    assert not torch.equal(builtin, ours), "the two tables must differ for this test to tell them apart"
    assert float(builtin[-1]) == pytest.approx(SIGMA_MAX_ZTSNR, rel=1e-6)
    for step in rec.steps:
        assert step["wrapper_type"] == "CompVisVDenoiser"
        assert torch.equal(step["sigmas"], builtin)
    assert [float(s["sigma"][-1]) for s in rec.steps] == [float(builtin[t]) for t in trailing_timesteps(4)] * 2
    keys = infotext(out)
    assert keys["Noise Schedule"] == "Zero Terminal SNR"
    assert vpred_keys(out) == {**DEFAULT_INFOTEXT, "VPred ZTSNR": "built-in"}
    assert p.sampler_noise_scheduler_override is None


def test_builtin_zero_terminal_snr_option_img2img_after_a_previous_job(make_webui):
    """Second img2img job with the option: the model's table is already the built-in one when the sampler is built."""
    w = new_webui(make_webui, True, models=[V_SD1])
    model = w.shared.sd_model
    override = {"sd_noise_schedule": "Zero Terminal SNR"}
    w.run("txt2img", prompt="a cat", steps=4, override_settings=override)
    rec = Recorder(w)
    _, out = w.run("img2img", prompt="a cat", steps=4, denoising_strength=0.5, override_settings=override)
    builtin = kdiffusion_sigmas(w.sd_models.rescale_zero_terminal_snr_abar(model.alphas_cumprod_original.clone()))
    assert all(torch.equal(s["sigmas"], builtin) for s in rec.steps)
    assert float(rec.steps[0]["sigma"][0]) == float(builtin[749])
    assert vpred_keys(out)["VPred ZTSNR"] == "built-in"


def test_builtin_zero_terminal_snr_option_first_img2img_job_really_uses_ztsnr(make_webui):
    w = new_webui(make_webui, True, models=[V_SD1])
    rec = Recorder(w)
    _, out = w.run(
        "img2img",
        prompt="a cat",
        steps=4,
        denoising_strength=1.0,
        override_settings={"sd_noise_schedule": "Zero Terminal SNR"},
    )
    assert vpred_keys(out)["VPred ZTSNR"] in ("built-in", "on (auto)")
    # the infotext claims ZTSNR: the sampler's table must then be a ZTSNR one
    assert float(rec.steps[0]["sigmas"][-1]) == pytest.approx(SIGMA_MAX_ZTSNR, rel=1e-4)


def test_downcast_alphas_cumprod_option_is_ignored_for_our_table(make_webui):
    """'Downcast alphas_cumprod' makes the model's table fp16; our ZTSNR table is still float32 from the original."""
    w = new_webui(make_webui, True, models=[V_SD1])
    model = w.shared.sd_model
    rec = Recorder(w)
    _, out = w.run("txt2img", prompt="a cat", steps=4, override_settings={"use_downcasted_alpha_bar": True})
    assert model.alphas_cumprod.dtype == torch.float16  # the WebUI's own doing, per batch
    table = ztsnr_sigmas(model.alphas_cumprod_original)
    assert all(torch.equal(s["sigmas"], table) for s in rec.steps)
    assert torch.isfinite(images(out)).all()
    assert vpred_keys(out) == DEFAULT_INFOTEXT


def test_downcast_with_builtin_zero_terminal_snr_still_samples_finite(make_webui):
    w = new_webui(make_webui, True, models=[V_SD1])
    rec = Recorder(w)
    override = {"use_downcasted_alpha_bar": True, "sd_noise_schedule": "Zero Terminal SNR"}
    _, out = w.run("txt2img", prompt="a cat", steps=4, override_settings=override)
    assert "VPred ZTSNR" in vpred_keys(out)
    assert torch.isfinite(rec.steps[0]["sigmas"]).all()
    assert float(rec.steps[0]["sigma"][0]) == pytest.approx(SIGMA_MAX_ZTSNR, rel=1e-4)
    assert torch.isfinite(images(out)).all()


def test_hires_v_checkpoint_after_an_eps_first_pass(make_webui, monkeypatch):
    """eps first pass (the WebUI's own), v ``hr_checkpoint_name``: only the hires pass gets the plan."""
    with_ext, without = pair(make_webui, models=[EPS_SD1, V_SD1])
    first_pass = {}
    for w in (with_ext, without):
        cls = w.mods.processing.StableDiffusionProcessingTxt2Img
        original = cls.sample_hr_pass

        def record(self, samples, _original=original, _w=w):
            first_pass[_w] = samples.clone()
            return _original(self, samples)

        monkeypatch.setattr(cls, "sample_hr_pass", record)
    rec = Recorder(with_ext)
    kwargs = {"prompt": "a cat", "steps": 4, "enable_hr": True, "hr_second_pass_steps": 4}
    p, out = with_ext.run("txt2img", hr_checkpoint_name=V_SD1[0], **kwargs)
    without.run("txt2img", hr_checkpoint_name=V_SD1[0], **kwargs)
    assert torch.equal(first_pass[with_ext], first_pass[without])
    first = [s for s in rec.steps if not s["is_hr_pass"]]
    second = [s for s in rec.steps if s["is_hr_pass"]]
    assert {s["wrapper_type"] for s in first} == {"CompVisDenoiser"}
    assert all(s["override"] is None for s in first)
    v_model = with_ext.models[V_SD1[0]]
    table = ztsnr_sigmas(v_model.alphas_cumprod_original)
    assert {s["wrapper_type"] for s in second} == {"CompVisVDenoiser"}
    assert all(torch.equal(s["sigmas"], table) for s in second)
    assert [float(s["sigma"][-1]) for s in second] == [float(table[t]) for t in trailing_timesteps(5)[1:]]
    assert vpred_keys(out) == DEFAULT_INFOTEXT
    assert p.sampler_noise_scheduler_override is None


@pytest.mark.parametrize("refiner", ["v", "eps"])
def test_refiner_switch_follows_the_refiners_own_detection(make_webui, refiner):
    second = ("fluffy2", V_SD1[1]) if refiner == "v" else EPS_SD1
    w = new_webui(make_webui, True, models=[V_SD1, second])
    rec = Recorder(w)
    _, out = w.run("txt2img", prompt="a cat", steps=4, refiner_checkpoint=second[0], refiner_switch_at=0.5)
    base, ref = w.models[V_SD1[0]], w.models[second[0]]
    assert [s["model"] for s in rec.steps] == [base, base, ref, ref]
    table = ztsnr_sigmas(base.alphas_cumprod_original)
    assert [float(s["sigma"][-1]) for s in rec.steps] == [float(table[t]) for t in trailing_timesteps(4)]
    after = rec.steps[2:]
    if refiner == "v":
        assert {s["wrapper_type"] for s in after} == {"CompVisVDenoiser"}
        assert all(torch.equal(s["sigmas"], ztsnr_sigmas(ref.alphas_cumprod_original)) for s in after)
    else:
        assert {s["wrapper_type"] for s in after} == {"CompVisDenoiser"}
        assert all(torch.equal(s["sigmas"], kdiffusion_sigmas(ref.alphas_cumprod)) for s in after)
    assert infotext(out)["Refiner"] == second[0]
    assert w.errors.reported == []
    # the next job starts from the base checkpoint again and is unaffected by the switch
    base.calls.clear()
    _, again = w.run("txt2img", prompt="a cat", steps=4)
    _approx(call_timesteps(base), [999, 749, 499, 249])
    assert vpred_keys(again) == DEFAULT_INFOTEXT


def test_eps_base_with_a_v_refiner_follows_the_refiners_own_detection(make_webui, monkeypatch):
    w = new_webui(make_webui, True, models=[EPS_SD1, V_SD1])
    calls = spy_combine(monkeypatch, w)
    rec = Recorder(w)
    w.run("txt2img", prompt="a cat", steps=4, refiner_checkpoint=V_SD1[0], refiner_switch_at=0.5)
    refiner = w.models[V_SD1[0]]
    after = [(s, c) for s, c in zip(rec.steps, calls, strict=True) if s["model"] is refiner]
    assert len(after) == 2
    assert {s["wrapper_type"] for s, _ in after} == {"CompVisVDenoiser"}
    assert all(torch.equal(s["sigmas"], ztsnr_sigmas(refiner.alphas_cumprod_original)) for s, _ in after)
    assert all(not torch.equal(s["denoised"], c["plain"]) for s, c in after)  # CFG rescale 0.7 applies


class _OtherScript:
    """Another always-on script that sets its own ``p.sampler_noise_scheduler_override`` in ``process``."""

    alwayson = True
    filename = "other.py"

    def __init__(self, runner):
        self.args_from = self.args_to = len(runner.inputs)
        runner.alwayson_scripts.append(self)

    @staticmethod
    def schedule(steps):
        return torch.cat([torch.linspace(10.0, 0.1, steps), torch.zeros(1)])

    def process(self, p):
        p.sampler_noise_scheduler_override = self.schedule

    def before_process(self, p):
        pass

    def before_hr(self, p):
        pass

    def process_before_every_sampling(self, p, **kwargs):
        pass

    def postprocess(self, p, processed):
        pass


@pytest.mark.parametrize("model_spec", [V_SD1, EPS_SD1], ids=["v", "eps"])
def test_another_scripts_scheduler_override_is_restored(make_webui, model_spec):
    w = new_webui(make_webui, True, models=[model_spec])
    other = _OtherScript(w.runners[False])
    rec = Recorder(w)
    p, _ = w.run("txt2img", prompt="a cat", steps=4, enable_hr=True, hr_second_pass_steps=3)
    assert p.sampler_noise_scheduler_override == other.schedule
    first = [float(s["sigma"][0]) for s in rec.steps if not s["is_hr_pass"]]
    if model_spec is V_SD1:
        table = ztsnr_sigmas(w.shared.sd_model.alphas_cumprod_original)
        assert first == [float(table[t]) for t in trailing_timesteps(4)]
    else:
        assert first == pytest.approx(other.schedule(4)[:-1].tolist())
