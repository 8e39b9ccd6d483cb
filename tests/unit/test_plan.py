"""The per-pass decision (lib_vpred.plan.decide): every rule of the WebUI integration, without the WebUI."""

from __future__ import annotations

import dataclasses

import pytest

from lib_vpred import params as vp
from lib_vpred.plan import KDIFFUSION, OTHER, TIMESTEP, ModelFacts, SamplerFacts, decide


@dataclasses.dataclass(frozen=True)
class Det:
    prediction: str | None = None
    ztsnr: bool | None = None
    family: str = "unknown"
    reasons: tuple[str, ...] = ()


DEFAULTS = vp.defaults()
EULER = SamplerFacts("Euler", KDIFFUSION)
SD1_V = ModelFacts(
    name="fluffy", webui_prediction="v", webui_prediction_reason="YAML beside the checkpoint", family="SD1"
)
SD1_EPS = ModelFacts(name="eps", webui_prediction="eps", family="SD1")
SDXL_KEYS = ModelFacts(
    name="noob",
    webui_prediction="eps",
    family="SDXL",
    detection=Det("v", True, "SDXL", ("safetensors key 'v_pred' present",)),
)


def test_sd1_vpred_defaults_apply_everything():
    plan = decide(DEFAULTS, SD1_V, EULER)
    assert plan.active
    assert (plan.prediction, plan.ztsnr, plan.install_ztsnr_table, plan.trailing, plan.cfg_rescale) == (
        "v",
        True,
        True,
        True,
        0.7,
    )
    assert plan.override_prediction is None  # the WebUI already samples it as v
    assert plan.infotext() == {
        "VPred prediction": "v-prediction (auto)",
        "VPred ZTSNR": "on (auto)",
        "VPred spacing": "trailing (auto)",
        "VPred CFG rescale": 0.7,
    }
    # one short line in plain words, true for every tab (no "first step at t=999": img2img starts lower)
    assert plan.status() == "v-prediction + zero terminal SNR, trailing steps, CFG rescale 0.7"
    assert plan.details() == "Why: YAML beside the checkpoint; SD1 v-pred assumed ZTSNR"
    assert plan.summary() == "v-pred + ZTSNR · trailing · φ 0.7"


@pytest.mark.parametrize(
    "sampler", [SamplerFacts("Euler", KDIFFUSION), SamplerFacts("DDIM", TIMESTEP), SamplerFacts("LCM", OTHER)]
)
@pytest.mark.parametrize(
    "settings",
    [
        DEFAULTS,
        DEFAULTS.replace(cfg_rescale=1.0),
        DEFAULTS.replace(spacing="Schedule type"),
        DEFAULTS.replace(ztsnr="Off"),
    ],
)
def test_eps_checkpoint_with_auto_is_never_touched(settings, sampler):
    for model in (SD1_EPS, dataclasses.replace(SD1_EPS, table_is_ztsnr=True, builtin_ztsnr_option=True)):
        plan = decide(settings, model, sampler)
        assert not plan.active
        assert plan.infotext() == {}


def test_disabled_changes_nothing_and_is_recorded_only_where_it_would_have_acted():
    plan = decide(DEFAULTS.replace(enabled=False), SD1_V, EULER)
    assert not plan.active
    assert plan.status() == "disabled"
    assert plan.infotext() == {"VPred": "disabled"}
    assert vp.parse_infotext(plan.infotext()) == {"enabled": False}
    assert decide(DEFAULTS.replace(enabled=False), SD1_EPS, EULER).infotext() == {}


def test_sdxl_v_pred_key_without_yaml_is_sampled_as_v_with_ztsnr_from_key():
    plan = decide(DEFAULTS, SDXL_KEYS, EULER)
    assert plan.active
    assert plan.override_prediction == "v"
    assert plan.ztsnr
    assert "checkpoint says ZTSNR" in plan.reasons


def test_forced_eps_on_keyed_checkpoint_is_inactive_but_recorded():
    """The WebUI already samples it as eps: nothing changes, but the infotext records the override (pasting without
    it would restore Auto, which samples it as v), and the status does not call the checkpoint eps."""
    plan = decide(DEFAULTS.replace(prediction="eps"), SDXL_KEYS, EULER)
    assert not plan.active
    assert plan.infotext() == {"VPred prediction": "eps"}
    assert not plan.status().startswith("eps checkpoint")
    assert "v-pred checkpoint sampled as eps" in plan.status()
    pasted = DEFAULTS.replace(**vp.parse_infotext(plan.infotext()))
    assert decide(pasted, SDXL_KEYS, EULER) == plan


def test_forced_eps_on_yaml_v_checkpoint_overrides_to_eps_and_is_recorded():
    """The WebUI samples it as v (YAML): eps is applied (the denoiser only) and every key is recorded."""
    plan = decide(DEFAULTS.replace(prediction="eps"), SD1_V, EULER)
    assert plan.active
    assert plan.override_prediction == "eps"
    assert (plan.ztsnr, plan.trailing, plan.cfg_rescale) == (False, False, 0.0)
    assert plan.infotext()["VPred prediction"] == "eps"
    assert plan.status().startswith("v-pred checkpoint sampled as eps")
    pasted = DEFAULTS.replace(**vp.parse_infotext({k: str(v) for k, v in plan.infotext().items()}))
    assert decide(pasted, SD1_V, EULER) == plan


def test_forced_v_on_eps_checkpoint_overrides_the_wrapper():
    plan = decide(DEFAULTS.replace(prediction="v-prediction"), SD1_EPS, EULER)
    assert plan.active
    assert plan.override_prediction == "v"
    assert plan.infotext()["VPred prediction"] == "v-prediction"
    assert plan.ztsnr  # SD1 v-pred assumed ZTSNR


def test_forcing_ztsnr_on_an_eps_checkpoint_warns_and_keeps_phi_off():
    plan = decide(DEFAULTS.replace(ztsnr="On"), SD1_EPS, EULER)
    assert plan.active
    assert plan.prediction == "eps"
    assert plan.cfg_rescale == 0.0
    assert any("eps" in w for w in plan.warnings)
    assert plan.infotext()["VPred ZTSNR"] == "on"


def test_sd2_v_is_not_ztsnr_by_default_and_unknown_family_warns():
    sd2 = dataclasses.replace(SD1_V, family="SD2")
    plan = decide(DEFAULTS, sd2, EULER)
    assert plan.active
    assert not plan.ztsnr
    assert not plan.install_ztsnr_table
    assert plan.infotext()["VPred ZTSNR"] == "off (auto)"
    unknown = dataclasses.replace(SD1_V, family="unknown")
    assert any("without ZTSNR evidence" in w for w in decide(DEFAULTS, unknown, EULER).warnings)


def test_detection_evidence_beats_the_family_rule():
    says_no = dataclasses.replace(SD1_V, detection=Det("v", False, "SD1", ()))
    plan = decide(DEFAULTS, says_no, EULER)
    assert not plan.ztsnr


def test_builtin_ztsnr_option_is_not_applied_twice():
    model = dataclasses.replace(SD1_V, table_is_ztsnr=True, builtin_ztsnr_option=True)
    plan = decide(DEFAULTS, model, EULER)
    assert plan.ztsnr
    assert not plan.install_ztsnr_table
    assert plan.infotext()["VPred ZTSNR"] == "built-in"
    assert "(WebUI setting)" in plan.status()


def test_builtin_option_with_ztsnr_off_warns_that_it_still_applies():
    model = dataclasses.replace(SD1_V, table_is_ztsnr=True, builtin_ztsnr_option=True)
    plan = decide(DEFAULTS.replace(ztsnr="Off"), model, EULER)
    assert not plan.ztsnr
    assert any("still applies" in w for w in plan.warnings)


def test_downcast_option_is_reported():
    model = dataclasses.replace(SD1_V, downcast_alphas_cumprod=True)
    plan = decide(DEFAULTS, model, EULER)
    assert plan.install_ztsnr_table
    assert any("Downcast" in w for w in plan.warnings)


def test_unsupported_samplers_run_unchanged_and_say_so():
    sampler = SamplerFacts("LCM", OTHER)
    plan = decide(DEFAULTS, SD1_V, sampler)
    assert not plan.active
    assert "sampler LCM is not supported yet" in plan.status()


@pytest.mark.parametrize("name", ["DDIM", "PLMS", "UniPC"])
def test_timestep_samplers_get_the_full_plan(name):
    plan = decide(DEFAULTS, SD1_V, SamplerFacts(name, TIMESTEP))
    assert plan.active
    assert (plan.ztsnr, plan.install_ztsnr_table, plan.trailing, plan.cfg_rescale) == (True, True, True, 0.7)


def test_ddim_cfgpp_gets_no_rescale_and_says_so():
    plan = decide(DEFAULTS, SD1_V, SamplerFacts("DDIM CFG++", TIMESTEP))
    assert plan.active
    assert plan.cfg_rescale == 0.0
    assert any("CFG++" in w for w in plan.warnings)


def test_discarding_sampler_warns_about_trailing():
    plan = decide(DEFAULTS, SD1_V, SamplerFacts("DPM2", KDIFFUSION, discards_penultimate_sigma=True))
    assert any("penultimate" in w for w in plan.warnings)


def test_edit_models_get_no_rescale():
    plan = decide(DEFAULTS, dataclasses.replace(SD1_V, is_edit_model=True), EULER)
    assert plan.cfg_rescale == 0.0
    assert plan.infotext()["VPred CFG rescale"] == 0.0


def test_unsupported_model_is_left_alone():
    plan = decide(DEFAULTS, dataclasses.replace(SD1_V, unsupported_reason="SD3 is a flow-matching model"), EULER)
    assert not plan.active
    assert "SD3" in plan.status()


def test_spacing_schedule_type_and_phi_zero_are_recorded_explicitly():
    # so that pasting the infotext reproduces the image instead of restoring the defaults
    plan = decide(DEFAULTS.replace(spacing="Schedule type", cfg_rescale=0.0), SD1_V, EULER)
    assert plan.active
    assert not plan.trailing
    assert plan.infotext()["VPred spacing"] == "schedule type"
    assert plan.infotext()["VPred CFG rescale"] == 0.0
    assert "steps from the Schedule type" in plan.status()
    assert "no CFG rescale" in plan.status()


def test_infotext_round_trips_through_params():
    for settings in (
        DEFAULTS,
        DEFAULTS.replace(prediction="v-prediction", ztsnr="On", cfg_rescale=0.35),
        DEFAULTS.replace(ztsnr="Off", spacing="Schedule type", cfg_rescale=0.0),
    ):
        plan = decide(settings, SD1_V, EULER)
        restored = vp.parse_infotext({k: str(v) for k, v in plan.infotext().items()})
        assert restored["prediction"] == settings.prediction
        assert restored["ztsnr"] == settings.ztsnr
        assert restored["spacing"] == settings.spacing
        assert restored["cfg_rescale"] == settings.cfg_rescale


def test_heun_under_ztsnr_takes_an_euler_first_step():
    plan = decide(DEFAULTS, SD1_V, SamplerFacts("Heun", KDIFFUSION))
    assert plan.active
    assert plan.euler_first_step
    assert "Heun: first step as Euler" in plan.details()
    assert not decide(DEFAULTS, SD1_V, EULER).euler_first_step
    assert not decide(DEFAULTS.replace(ztsnr="Off"), SD1_V, SamplerFacts("Heun", KDIFFUSION)).euler_first_step


@pytest.mark.parametrize(
    ("sampler", "scheduler", "warned"),
    [
        # Karras / Exponential per sampler: the trained reference model's pass counts (plan.MEASURED_FINE_SCHEDULE_TYPES)
        ("Euler", "Karras", True),
        ("Euler", "Exponential", False),
        ("Euler a", "Karras", True),
        ("Euler a", "Exponential", True),
        ("DPM++ 2M", "Karras", False),
        ("DPM++ 2M", "Exponential", False),
        ("DPM++ 2M SDE", "Karras", False),
        ("DPM++ 2M SDE", "Exponential", False),
        ("DPM++ SDE", "Karras", True),  # trained model: loses the most high band (proxy: fine)
        ("DPM++ SDE", "Exponential", False),
        ("Heun", "Karras", True),
        ("Heun", "Exponential", True),
        ("LMS", "Karras", True),
        ("LMS", "Exponential", False),
        # not on the trained model: the proxy's rule (fine with the DPM++ family, exponential integrators)
        ("DPM++ 3M SDE", "Karras", False),
        ("DPM2", "Karras", True),
        ("DPM++ 2M", "Polyexponential", False),
        ("Euler", "Polyexponential", True),
        ("DPM++ 2M", "Beta", True),  # harmful with every sampler
        ("Euler", "KL Optimal", True),
        ("Euler", "Uniform", False),
        ("Euler", "Simple", False),
    ],
)
def test_schedule_type_warnings_under_ztsnr_follow_the_measurements(sampler, scheduler, warned):
    settings = DEFAULTS.replace(spacing="Schedule type")
    plan = decide(settings, SD1_V, SamplerFacts(sampler, KDIFFUSION, scheduler=scheduler))
    assert any("puts most steps far above sigma 14.6" in w for w in plan.warnings) is warned
    # never with our spacing (Auto or Trailing), never without ZTSNR
    for spacing in ("Auto", "Trailing"):
        ours = decide(DEFAULTS.replace(spacing=spacing), SD1_V, SamplerFacts(sampler, KDIFFUSION, scheduler=scheduler))
        assert not any("puts most steps" in w for w in ours.warnings)
    off = decide(settings.replace(ztsnr="Off"), SD1_V, SamplerFacts(sampler, KDIFFUSION, scheduler=scheduler))
    assert not any("puts most steps" in w for w in off.warnings)


# --- Timestep spacing: Auto --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "family", "resolved"),
    [
        ("DPM++ 2M", KDIFFUSION, "exponential"),  # bench_trained: Exponential 8 of 15 settings against trailing's 3
        ("LMS", KDIFFUSION, "exponential"),  # 7 against 4
        ("Euler", KDIFFUSION, "trailing"),
        ("Euler a", KDIFFUSION, "trailing"),
        ("DPM++ SDE", KDIFFUSION, "trailing"),
        ("DPM++ 2M SDE", KDIFFUSION, "trailing"),
        ("Heun", KDIFFUSION, "trailing"),
        ("DPM++ 3M SDE", KDIFFUSION, "trailing"),  # unmeasured: the paper's choice
        ("Restart", KDIFFUSION, "trailing"),
        ("DDIM", TIMESTEP, "trailing"),
        ("PLMS", TIMESTEP, "trailing"),
        ("UniPC", TIMESTEP, "trailing"),
    ],
)
def test_auto_spacing_resolves_per_sampler_and_is_recorded(sampler, family, resolved):
    plan = decide(DEFAULTS, SD1_V, SamplerFacts(sampler, family, scheduler="Karras"))
    assert plan.active
    assert plan.spacing_auto
    assert plan.spacing == resolved
    assert plan.trailing is (resolved == "trailing")
    assert plan.overrides_schedule
    assert plan.infotext()["VPred spacing"] == f"{resolved} (auto)"
    assert plan.summary().split(" · ")[1] == resolved
    # the selected Schedule type is replaced, so it never warns
    assert not any("schedule type" in w.lower() for w in plan.warnings)
    # an explicit choice wins over Auto, and is recorded without "(auto)"
    explicit = decide(DEFAULTS.replace(spacing="Trailing"), SD1_V, SamplerFacts(sampler, family))
    assert (explicit.spacing, explicit.spacing_auto) == ("trailing", False)
    assert explicit.infotext()["VPred spacing"] == "trailing"
    own = decide(DEFAULTS.replace(spacing="Schedule type"), SD1_V, SamplerFacts(sampler, family))
    assert (own.spacing, own.overrides_schedule) == ("schedule type", False)


def test_auto_exponential_status_and_discard_warning():
    plan = decide(DEFAULTS, SD1_V, SamplerFacts("DPM++ 2M", KDIFFUSION, discards_penultimate_sigma=True))
    assert plan.status() == "v-prediction + zero terminal SNR, exponential steps from pure noise, CFG rescale 0.7"
    assert plan.summary() == "v-pred + ZTSNR · exponential · φ 0.7 · ⚠"
    assert "DPM++ 2M discards the penultimate sigma, so its exponential schedule has one step fewer" in plan.warnings


def test_auto_spacing_round_trips_through_the_infotext():
    for sampler in ("DPM++ 2M", "Euler"):
        plan = decide(DEFAULTS, SD1_V, SamplerFacts(sampler, KDIFFUSION))
        restored = vp.parse_infotext({k: str(v) for k, v in plan.infotext().items()})
        assert restored["spacing"] == "Auto"
        again = decide(DEFAULTS.replace(**restored), SD1_V, SamplerFacts(sampler, KDIFFUSION))
        assert again.infotext() == plan.infotext()


def test_auto_never_gives_a_timestep_sampler_a_sigma_schedule(monkeypatch):
    from lib_vpred import plan as plan_mod

    monkeypatch.setattr(plan_mod, "AUTO_SPACING", {"DDIM": plan_mod.EXPONENTIAL})
    assert plan_mod.auto_spacing("DDIM") == "exponential"
    plan = decide(DEFAULTS, SD1_V, SamplerFacts("DDIM", TIMESTEP))
    assert plan.spacing == "trailing"


def test_auto_spacing_on_eps_and_when_disabled_changes_nothing():
    assert not decide(DEFAULTS, SD1_EPS, SamplerFacts("DPM++ 2M", KDIFFUSION)).active
    off = decide(DEFAULTS.replace(enabled=False), SD1_V, SamplerFacts("DPM++ 2M", KDIFFUSION))
    assert not off.active
    assert off.infotext() == {"VPred": "disabled"}


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "LMS"])
def test_auto_gives_img2img_and_hires_passes_trailing(sampler):
    """A pass that starts part-way (img2img, hires) is sliced by its denoising strength: exponential steps crowd at
    high noise, so Auto keeps trailing there; explicit choices are unaffected."""
    partial = SamplerFacts(sampler, KDIFFUSION, partial_denoise=True)
    plan = decide(DEFAULTS, SD1_V, partial)
    assert (plan.spacing, plan.spacing_auto) == ("trailing", True)
    assert plan.infotext()["VPred spacing"] == "trailing (auto)"
    assert decide(DEFAULTS.replace(spacing="Schedule type"), SD1_V, partial).spacing == "schedule type"
    assert decide(DEFAULTS, SD1_V, SamplerFacts(sampler, KDIFFUSION)).spacing == "exponential"
