"""What one sampling pass will do: a pure decision from the settings, the model facts and the sampler.

The WebUI glue gathers facts (:class:`ModelFacts`, :class:`SamplerFacts`), calls :func:`decide` and applies the
resulting :class:`Plan`. Keeping the decision here makes every rule testable without the WebUI, and the same function
produces the panel's status line, the console warnings and the infotext, so they can never disagree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Protocol

from lib_vpred.params import PARAMS_BY_NAME, VPredParams, format_infotext_value

#: Sampler families as the WebUI builds them (``modules.sd_samplers_*``).
KDIFFUSION = "k-diffusion"
TIMESTEP = "timestep"  # DDIM, DDIM CFG++, PLMS, UniPC (``CompVisSampler``)
OTHER = "other"  # LCM and anything unknown

#: Resolved timestep spacings of a pass, as the infotext writes them (``VPred spacing: trailing``).
TRAILING = "trailing"  # the trailing timesteps of the pass's table (paper Table 2)
EXPONENTIAL = "exponential"  # log-even from the table's sigma_max (t = 999) to sigma_min (lib_vpred.schedule)
SCHEDULE_TYPE = "schedule type"  # the WebUI's own Schedule type / the sampler's own spacing

#: What ``Timestep spacing: Auto`` resolves to, per sampler (k-diffusion samplers by WebUI name; anything not listed,
#: the timestep samplers and unmeasured samplers included, gets trailing, the paper's choice). From the trained
#: reference model (``bench/bench_trained.py``, README "Benchmarks": in how many of its 15 settings, 10/20/30 steps x
#: 5 guidance settings, a schedule is within 10 % of that setting's best on brightness std, high-band power and the
#: distribution distance): DPM++ 2M, Exponential 8 against trailing's 3 (and best at 10 steps with CFG, where Karras,
#: the WebUI's default, breaks); LMS, Exponential 7 against 4 (trailing over-sharpens with CFG 7.5). Heun (Exponential
#: 4 vs 5) and DPM++ 2M SDE (Karras 7 vs 0, but it fails at 10 steps with CFG) keep trailing.
AUTO_SPACING: Mapping[str, str] = MappingProxyType({"DPM++ 2M": EXPONENTIAL, "LMS": EXPONENTIAL})


def auto_spacing(sampler_name: str | None) -> str:
    """The spacing ``Auto`` picks for ``sampler_name``: :data:`EXPONENTIAL` or :data:`TRAILING`."""
    return AUTO_SPACING.get(sampler_name or "", TRAILING)


#: Schedule types that, with the ZTSNR sigma_max ~ 4518.8, put most steps far above sigma 14.6 (peers.md section 10).
WASTEFUL_UNDER_ZTSNR = frozenset({"Karras", "Exponential", "Polyexponential", "Beta", "KL Optimal"})
#: Of those, the ones bench/bench_fidelity.py measured as harmful with every sampler (Beta is linear in sigma in
#: v1.10.1; KL Optimal leaves one step between sigma 4518.8 and ~6).
HARMFUL_WITH_EVERY_SAMPLER = frozenset({"Beta", "KL Optimal"})
#: Karras / Exponential with ``Timestep spacing: Schedule type`` under ZTSNR: the ones that measured fine per sampler on
#: the trained reference model (the same pass counts as :data:`AUTO_SPACING`; trailing's count in brackets): Euler
#: Exponential 12 [11] (Karras 2); Euler a neither (2 and 2 [12]); DPM++ 2M Karras 7, Exponential 8 [3]; DPM++ 2M SDE
#: Karras 7, Exponential 4 [0]; DPM++ SDE Exponential (4 [7] strict, 15 [15] within the sampling noise; Karras 4 and 9
#: [15], and it loses the most high band: 0.45 vs 0.70 at 20 steps, CFG 1); Heun neither (3 and 4 [5], both far worse
#: at 10 steps); LMS Exponential 7 [4] (Karras 3). Every listed sampler's unlisted type loses detail (warning).
MEASURED_FINE_SCHEDULE_TYPES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "Euler": frozenset({"Exponential"}),
        "Euler a": frozenset(),
        "DPM++ 2M": frozenset({"Karras", "Exponential"}),
        "DPM++ 2M SDE": frozenset({"Karras", "Exponential"}),
        "DPM++ SDE": frozenset({"Exponential"}),
        "Heun": frozenset(),
        "LMS": frozenset({"Exponential"}),
    }
)
#: Schedule types the trained model measured (the rest of :data:`WASTEFUL_UNDER_ZTSNR` follows the proxy's rule).
MEASURED_SCHEDULE_TYPES = frozenset({"Karras", "Exponential"})
#: Samplers not on the trained model for which Karras / Exponential / Polyexponential under ZTSNR measured fine on the
#: exact-denoiser proxy (bench/bench_fidelity.py: exponential integrators).
DPM_SOLVER_FAMILY_PREFIX = "DPM++"
#: Samplers whose Heun-type first step from the ZTSNR sigma_max ~ 4518.8 to ~18 amplifies the error of the second
#: slope (measured on an exact denoiser in tests/unit/test_kdiffusion_sampling.py and bench/bench_fidelity.py:
#: brightness spread ~7x the data's at 10 steps, ~1.2x at 20, against ~1x for Euler and DPM++ 2M). The plan takes
#: their first step with Euler instead.
SECOND_ORDER_FIRST_STEP_UNSTABLE = frozenset({"Heun"})


def schedule_type_loses_detail(scheduler: str | None, sampler_name: str | None) -> bool:
    """The one rule (README "Compatibility") for a schedule type under ZTSNR with ``Timestep spacing: Schedule type``:
    Beta / KL Optimal lose detail with every sampler; Karras / Exponential with the samplers the trained model measured
    them losing on (:data:`MEASURED_FINE_SCHEDULE_TYPES`); otherwise Karras / Exponential / Polyexponential with every
    sampler but the DPM++ family (the proxy's rule). Used by the plan and the schedule preview."""
    if scheduler not in WASTEFUL_UNDER_ZTSNR:
        return False
    if scheduler in HARMFUL_WITH_EVERY_SAMPLER:
        return True
    fine = MEASURED_FINE_SCHEDULE_TYPES.get(sampler_name or "")
    if fine is not None and scheduler in MEASURED_SCHEDULE_TYPES:
        return scheduler not in fine
    return not (sampler_name or "").startswith(DPM_SOLVER_FAMILY_PREFIX)


#: Schedule types with fixed sigma tables that ignore the model's schedule (Align Your Steps starts at 14.615).
IGNORES_TABLE = frozenset({"Align Your Steps", "Align Your Steps GITS", "Align Your Steps 11", "Align Your Steps 32"})


class DetectionLike(Protocol):
    prediction: str | None
    ztsnr: bool | None
    family: str
    reasons: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the WebUI has loaded, as seen by the glue for one pass."""

    name: str = "unknown"
    #: ``sd_model.parameterization`` as the WebUI will sample it ("v" or "eps").
    webui_prediction: str = "eps"
    #: Why the WebUI samples it that way (e.g. "YAML beside the checkpoint"), for the status line.
    webui_prediction_reason: str = ""
    family: str = "unknown"
    #: The model's current ``alphas_cumprod`` is already zero-terminal-SNR (the built-in setting, or a YAML).
    table_is_ztsnr: bool = False
    #: The WebUI's "Noise schedule for sampling" option is "Zero Terminal SNR".
    builtin_ztsnr_option: bool = False
    downcast_alphas_cumprod: bool = False
    is_edit_model: bool = False
    #: Models the extension never touches (SD3 builds its own flow-matching denoiser).
    unsupported_reason: str | None = None
    detection: DetectionLike | None = None
    #: A Settings rule for this checkpoint (``params.CheckpointOverride``): beats detection when a control is Auto.
    override: Any = None
    #: Settings: treat an SD1 v-pred checkpoint without ZTSNR evidence as ZTSNR (the fluffyrock family is).
    assume_sd1_ztsnr: bool = True


@dataclasses.dataclass(frozen=True)
class SamplerFacts:
    name: str = "Euler"
    family: str = KDIFFUSION
    #: The WebUI will drop the penultimate sigma (sampler default or "always discard" option).
    discards_penultimate_sigma: bool = False
    #: The pass's schedule type label after resolving "Automatic" (e.g. "Karras"), or None for the sampler default.
    scheduler: str | None = None
    #: Other active CFG rescalers, by infotext key found on ``p`` (e.g. "CFG Rescale" of CFG_Rescale_webui).
    other_cfg_rescalers: tuple[str, ...] = ()
    #: The pass starts part-way down its schedule (img2img, the hires pass): the denoising strength slices it.
    partial_denoise: bool = False


@dataclasses.dataclass(frozen=True)
class Plan:
    """The decision for one pass. ``active`` False means: change nothing at all."""

    active: bool
    prediction: str | None = None
    prediction_auto: bool = True
    #: Replace the sampler's denoiser wrapper with this parameterization ("v" or "eps"), or None to keep the WebUI's.
    override_prediction: str | None = None
    ztsnr: bool = False
    ztsnr_auto: bool = True
    #: Install our ZTSNR sigma table (False when the WebUI's built-in option already made the table ZTSNR).
    install_ztsnr_table: bool = False
    ztsnr_by_builtin: bool = False
    #: The resolved spacing: :data:`TRAILING`, :data:`EXPONENTIAL` (both ours) or :data:`SCHEDULE_TYPE` (the WebUI's).
    spacing: str = SCHEDULE_TYPE
    #: ``spacing`` was picked by ``Timestep spacing: Auto`` (:func:`auto_spacing`).
    spacing_auto: bool = False
    cfg_rescale: float = 0.0
    #: Take the first step down from the ZTSNR sigma_max with Euler (``lib_vpred.sampling.with_euler_first_step``).
    euler_first_step: bool = False
    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    #: Why nothing is applied (inactive plans), for the status line.
    inactive_reason: str = ""
    #: Disabled by the user on a checkpoint the extension would have acted on: recorded so pasting reproduces it.
    disabled_but_applicable: bool = False

    #: What Auto would sample the checkpoint as ("v" or "eps"); differs from ``prediction`` when the user overrode it.
    checkpoint_prediction: str | None = None
    #: Inactive, but an explicit prediction the defaults would not choose: recorded so that pasting reproduces it.
    records_prediction: bool = False

    @property
    def trailing(self) -> bool:
        """Trailing timesteps (for timestep samplers: the only spacing of ours they take)."""
        return self.spacing == TRAILING

    @property
    def overrides_schedule(self) -> bool:
        """Our sigma schedule replaces the WebUI's Schedule type (trailing or exponential)."""
        return self.spacing != SCHEDULE_TYPE

    def _what(self) -> str:
        """The prediction and ZTSNR part, in plain words, true for the checkpoint (an override says so)."""
        if self.prediction == "v":
            what = "v-prediction" if self.checkpoint_prediction in (None, "v") else "eps checkpoint sampled as v"
        else:
            what = "eps" if self.checkpoint_prediction in (None, "eps") else "v-pred checkpoint sampled as eps"
        if self.ztsnr:
            what += " + zero terminal SNR" + (" (WebUI setting)" if self.ztsnr_by_builtin else "")
        return what

    def status(self) -> str:
        """One short line in plain words: what the next generation will do (reasons and warnings: :meth:`details`).

        True for every tab and sampler: steps, strength and schedule types are the schedule preview's business."""
        if not self.active:
            return self.inactive_reason or "not applied"
        steps = {TRAILING: "trailing steps", EXPONENTIAL: "exponential steps from pure noise"}.get(
            self.spacing, "steps from the Schedule type"
        )
        phi = f"CFG rescale {self.cfg_rescale:g}" if self.cfg_rescale > 0 else "no CFG rescale"
        return f"{self._what()}, {steps}, {phi}"

    def details(self) -> str:
        """Why (detection reasons) and the warnings, for the status line's hover text and the console."""
        lines = []
        if self.reasons:
            lines.append("Why: " + "; ".join(self.reasons))
        lines += [f"Warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def summary(self) -> str:
        """A few words for the panel's (closed) header, e.g. ``v-pred + ZTSNR · trailing · φ 0.7``."""
        if not self.active:
            if self.inactive_reason == "disabled":
                return "off"
            if self.records_prediction:
                return "eps (override) · otherwise unchanged"
            if self.inactive_reason.startswith("eps checkpoint"):
                return "eps checkpoint, nothing to do"
            return "not applied"
        what = "v-pred" if self.prediction == "v" else "eps"
        if self.checkpoint_prediction not in (None, self.prediction):
            what += " (override)"
        if self.ztsnr:
            what += " + ZTSNR"
        parts = [what, self.spacing if self.overrides_schedule else "Schedule type"]
        parts.append(f"φ {self.cfg_rescale:g}" if self.cfg_rescale > 0 else "no CFG rescale")
        if self.warnings:
            parts.append("⚠")
        return " · ".join(parts)

    def infotext(self) -> dict[str, Any]:
        """The extension's infotext keys for this pass (effective values, ``(auto)`` when decided automatically)."""
        key = {p.name: p.infotext_key for p in PARAMS_BY_NAME.values()}
        if not self.active:
            # Nothing was applied. Only a user's "off" on a checkpoint we would act on is recorded (eps stays clean).
            if self.disabled_but_applicable:
                return {key["enabled"]: "disabled"}
            if self.records_prediction:
                return {key["prediction"]: "v-prediction" if self.prediction == "v" else "eps"}
            return {}
        out: dict[str, Any] = {
            key["prediction"]: format_infotext_value(
                "v-prediction" if self.prediction == "v" else "eps", self.prediction_auto
            )
        }
        if self.ztsnr_by_builtin:
            out[key["ztsnr"]] = "built-in"
        else:
            out[key["ztsnr"]] = format_infotext_value("on" if self.ztsnr else "off", self.ztsnr_auto)
        out[key["spacing"]] = format_infotext_value(self.spacing, self.spacing_auto)
        out[key["cfg_rescale"]] = self.cfg_rescale
        return out


def _decide_prediction(params: VPredParams, model: ModelFacts) -> tuple[str, bool, list[str]]:
    if params.prediction == "v-prediction":
        return "v", False, ["prediction set to v"]
    if params.prediction == "eps":
        return "eps", False, ["prediction set to eps"]
    if model.override is not None and model.override.prediction is not None:
        return model.override.prediction, True, [f"Settings override '{model.override.pattern}'"]
    det = model.detection
    if model.webui_prediction == "v":
        return "v", True, [model.webui_prediction_reason or "WebUI samples it as v"]
    if det is not None and det.prediction == "v":
        # detect lists the reason for its prediction decision first
        return "v", True, [det.reasons[0] if det.reasons else "checkpoint flags v-prediction"]
    return "eps", True, []


def _decide_ztsnr(params: VPredParams, model: ModelFacts, prediction: str) -> tuple[bool, bool, list[str], list[str]]:
    """(ztsnr, auto, reasons, warnings)."""
    if params.ztsnr == "On":
        warnings = (
            ["ZTSNR forced on for an eps checkpoint: eps models cannot predict at zero SNR"]
            if prediction == "eps"
            else []
        )
        return True, False, ["ZTSNR set on"], warnings
    if params.ztsnr == "Off":
        return False, False, ["ZTSNR set off"], []
    if prediction != "v":
        return False, True, [], []  # Auto never acts on eps checkpoints, whatever else is configured
    if model.override is not None and model.override.ztsnr is not None:
        return model.override.ztsnr, True, [f"Settings override '{model.override.pattern}'"], []
    if model.table_is_ztsnr:
        return True, True, ["schedule already zero-terminal-SNR"], []
    det = model.detection
    if det is not None and det.ztsnr is not None:
        evidence = next((r for r in det.reasons if "ztsnr" in r.lower() or "terminal" in r.lower()), None)
        return (
            det.ztsnr,
            True,
            [evidence or ("checkpoint says ZTSNR" if det.ztsnr else "checkpoint says no ZTSNR")],
            [],
        )
    family = det.family if det is not None and det.family != "unknown" else model.family
    if family == "SD1" and model.assume_sd1_ztsnr:
        # Every public SD1.x v-prediction checkpoint family (fluffyrock, EasyFluff, ...) was trained with ZTSNR.
        return True, True, ["SD1 v-pred assumed ZTSNR"], []
    if family == "SD2":
        return False, True, ["SD2 v-pred (768-v) was trained without ZTSNR"], []
    return (
        False,
        True,
        ["no ZTSNR evidence"],
        ["v-pred checkpoint without ZTSNR evidence: set Zero terminal SNR to On if it was trained with ZTSNR"],
    )


_DEFAULT_PARAMS = VPredParams()


def decide(params: VPredParams, model: ModelFacts, sampler: SamplerFacts) -> Plan:
    """Decide what one sampling pass does. Pure: same inputs, same plan."""
    if not params.enabled:
        # Recorded only where the defaults would act (v checkpoints): pasting an infotext without our keys restores
        # the defaults, which would then change the image. eps checkpoints never get the key.
        would = decide(_DEFAULT_PARAMS, model, sampler)
        return Plan(active=False, inactive_reason="disabled", disabled_but_applicable=would.active)
    if model.unsupported_reason:
        return Plan(active=False, inactive_reason=model.unsupported_reason)

    prediction, prediction_auto, reasons = _decide_prediction(params, model)
    ztsnr, ztsnr_auto, ztsnr_reasons, warnings = _decide_ztsnr(params, model, prediction)
    reasons += ztsnr_reasons
    checkpoint_prediction = prediction if prediction_auto else _decide_prediction(_DEFAULT_PARAMS, model)[0]
    if prediction != "v" and not ztsnr:
        if checkpoint_prediction != "v":
            return Plan(
                active=False,
                prediction=prediction,
                reasons=tuple(reasons),
                inactive_reason="eps checkpoint: unchanged",
            )
        if sampler.family != OTHER:
            return _decide_eps_on_v(model, ztsnr_auto, reasons)

    if sampler.family != KDIFFUSION:
        if sampler.family == TIMESTEP:
            return _decide_timestep(params, model, sampler)
        return Plan(
            active=False,
            prediction=prediction,
            reasons=tuple(reasons),
            inactive_reason=f"sampler {sampler.name} is not supported yet: it runs unchanged (use a k-diffusion sampler such as Euler)",
        )

    override = prediction if prediction != model.webui_prediction else None
    by_builtin = ztsnr and model.table_is_ztsnr
    if model.builtin_ztsnr_option and not ztsnr:
        warnings.append("the WebUI's 'Noise schedule: Zero Terminal SNR' setting is on and still applies")
    if model.downcast_alphas_cumprod and ztsnr and not by_builtin:
        warnings.append(
            "'Downcast alphas_cumprod' is on: ignored, the ZTSNR table is built in float32 from the original"
        )
    spacing, spacing_auto = _decide_spacing(params, sampler)
    ours = spacing != SCHEDULE_TYPE
    if ours and sampler.discards_penultimate_sigma:
        warnings.append(f"{sampler.name} discards the penultimate sigma, so its {spacing} schedule has one step fewer")
    if ztsnr and not ours and schedule_type_loses_detail(sampler.scheduler, sampler.name):
        warnings.append(
            f"schedule type {sampler.scheduler} puts most steps far above sigma 14.6 under ZTSNR and loses detail "
            f"with {sampler.name}: set Timestep spacing to Auto (or Schedule type to Simple, SGM Uniform or Trailing)"
        )
    if ztsnr and not ours and sampler.scheduler in IGNORES_TABLE:
        warnings.append(
            f"schedule type {sampler.scheduler} uses fixed sigmas and ignores the ZTSNR table: set Timestep spacing to Auto"
        )
    euler_first = ztsnr and sampler.name in SECOND_ORDER_FIRST_STEP_UNSTABLE
    if euler_first:
        reasons.append(f"{sampler.name}: first step as Euler (stable from sigma 4518.8)")
    phi = params.cfg_rescale if prediction == "v" or not prediction_auto else 0.0
    if phi > 0 and sampler.other_cfg_rescalers:
        warnings.append(
            f"another CFG rescale is active ({', '.join(sampler.other_cfg_rescalers)}): it compounds with this one, "
            "set one of them to 0"
        )
    if phi > 0 and model.is_edit_model:
        warnings.append("CFG rescale is not applied to instruct-pix2pix (edit) models")
        phi = 0.0
    return Plan(
        active=True,
        prediction=prediction,
        prediction_auto=prediction_auto,
        override_prediction=override,
        ztsnr=ztsnr,
        ztsnr_auto=ztsnr_auto,
        install_ztsnr_table=ztsnr and not by_builtin,
        ztsnr_by_builtin=by_builtin and model.builtin_ztsnr_option,
        spacing=spacing,
        spacing_auto=spacing_auto,
        cfg_rescale=phi,
        euler_first_step=euler_first,
        reasons=tuple(reasons),
        warnings=tuple(warnings),
        checkpoint_prediction=checkpoint_prediction,
    )


def _decide_spacing(params: VPredParams, sampler: SamplerFacts) -> tuple[str, bool]:
    """(resolved spacing, picked by Auto). Auto: :func:`auto_spacing` of the sampler for passes from pure noise;
    trailing for img2img and hires passes, whose denoising strength slices the schedule by step count: exponential
    steps crowd at high noise, so strength 0.5 of 20 steps would start at t = 887 (sigma 15.7), almost a full re-noise,
    where trailing starts at t = 549 (README "Troubleshooting"; the benchmarks measured passes from pure noise)."""
    if params.spacing == "Trailing":
        return TRAILING, False
    if params.spacing == "Schedule type":
        return SCHEDULE_TYPE, False
    return (TRAILING if sampler.partial_denoise else auto_spacing(sampler.name)), True


def _decide_eps_on_v(model: ModelFacts, ztsnr_auto: bool, reasons: list[str]) -> Plan:
    """Prediction type set to eps on a checkpoint Auto takes for v: sampled as an eps checkpoint (the WebUI's own
    schedule, no CFG rescale), and recorded in the infotext so that pasting reproduces it instead of restoring Auto.
    When the WebUI already samples it as eps nothing changes at all; otherwise only the denoiser becomes eps."""
    reasons = [*reasons, "Auto would sample it as v"]
    if model.webui_prediction != "v":
        return Plan(
            active=False,
            prediction="eps",
            prediction_auto=False,
            reasons=tuple(reasons),
            inactive_reason="v-pred checkpoint sampled as eps (Prediction type), otherwise unchanged",
            checkpoint_prediction="v",
            records_prediction=True,
        )
    return Plan(
        active=True,
        prediction="eps",
        prediction_auto=False,
        override_prediction="eps",
        ztsnr=False,
        ztsnr_auto=ztsnr_auto,
        cfg_rescale=0.0,
        reasons=tuple(reasons),
        checkpoint_prediction="v",
    )


def _decide_timestep(params: VPredParams, model: ModelFacts, sampler: SamplerFacts) -> Plan:
    """Timestep samplers (DDIM, DDIM CFG++, PLMS, UniPC): the k-diffusion plan minus what does not apply to them
    (schedule types, discard-penultimate), plus their own rules. Applied by ``lib_vpred.webui.timestep_glue``."""
    as_kdiff = dataclasses.replace(sampler, family=KDIFFUSION, scheduler=None, discards_penultimate_sigma=False)
    base = decide(params, model, as_kdiff)
    if not base.active:
        return base
    if base.spacing not in (TRAILING, SCHEDULE_TYPE):
        base = dataclasses.replace(base, spacing=TRAILING)  # timestep samplers take timesteps: trailing is ours
    warnings = list(base.warnings)
    phi = base.cfg_rescale
    name = sampler.name
    if name == "DDIM CFG++" and phi > 0:
        warnings.append(
            "CFG rescale is not applied with DDIM CFG++ (its step direction uses the unconditional prediction)"
        )
        phi = 0.0
    if base.ztsnr and not base.trailing and name != "UniPC":
        warnings.append(
            f"{name} with its own (leading) spacing never samples t=999, where ZTSNR matters: "
            "set Timestep spacing to Auto or Trailing"
        )
    if base.trailing and sampler.discards_penultimate_sigma:
        warnings.append(f"'discard penultimate sigma' does not apply to {name} with trailing spacing")
    if name == "PLMS" and base.prediction != "v" and base.ztsnr:
        warnings.append("PLMS on an eps checkpoint divides by ~0 at zero terminal SNR: use DDIM or Euler")
    return dataclasses.replace(base, cfg_rescale=phi, warnings=tuple(warnings))
