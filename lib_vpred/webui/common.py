"""Glue shared by every host adapter: checkpoint detection (cached), Settings overrides, the pass's sampler facts and
our spacing's scheduler override on ``p`` (trailing or exponential).

The WebUI front end (``modules.processing``, ``modules.sd_samplers*``, ``modules.sd_schedulers``) is the same in the
AUTOMATIC1111 WebUI and in Forge, so what is read from it here is read the same way for both. What differs (where
the sigma table lives, how CFG is combined) is in the host adapters :mod:`lib_vpred.webui.hooks` (A1111) and
:mod:`lib_vpred.webui.forge`.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

from lib_vpred import detect, schedule
from lib_vpred.params import (
    HIRES_SPACING_KEY,
    LEGACY_CFG_RESCALE_KEYS,
    PARAMS_BY_NAME,
    find_checkpoint_override,
    parse_checkpoint_overrides,
)
from lib_vpred.plan import KDIFFUSION, OTHER, TIMESTEP, TRAILING, SamplerFacts

ATTR_SAVED_OVERRIDE = "_vpred_saved_scheduler_override"  # on p: the override that was there before ours


@functools.lru_cache(maxsize=64)
def _detect_cached(path: str, stamp: tuple[Any, ...]) -> detect.Detection:
    return detect.detect_checkpoint(path)


def _stat_stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def detect_file(path: str | None) -> detect.Detection | None:
    """``detect_checkpoint`` cached by the (mtime, size) of the checkpoint and of the YAML beside it (or its absence):
    a changed, added or removed file is re-read, unchanged ones never."""
    if not path:
        return None
    stamp = _stat_stamp(path)
    if stamp is None:
        return detect.detect_checkpoint(path)  # reports the problem as reasons
    return _detect_cached(path, (stamp, _stat_stamp(detect.yaml_beside(path))))


def model_family(sd_model: Any) -> str:
    """SD1, SD2 or SDXL from the loaded model's ``is_sd1/is_sd2/is_sdxl`` flags (A1111 and Forge set them alike)."""
    if getattr(sd_model, "is_sdxl", False):
        return "SDXL"
    if getattr(sd_model, "is_sd2", False):
        return "SD2"
    if getattr(sd_model, "is_sd1", False):
        return "SD1"
    return "unknown"


#: Settings keys (registered by scripts/vpred.py).
OPT_OVERRIDES = "vpred_checkpoint_overrides"
OPT_ASSUME_SD1_ZTSNR = "vpred_assume_sd1_ztsnr"


def checkpoint_override(info: Any, opts: Any) -> Any:
    """The first Settings override rule matching this checkpoint (by file name, name, title or hash), or None."""
    rules, _problems = parse_checkpoint_overrides(getattr(opts, OPT_OVERRIDES, "") or "")
    if not rules or info is None:
        return None
    filename = getattr(info, "filename", None)
    names: list[Any] = []
    if filename:
        base = os.path.basename(filename)
        names += [base, os.path.splitext(base)[0]]
    names += [getattr(info, attr, None) for attr in ("name", "model_name", "title", "shorthash", "sha256", "hash")]
    return find_checkpoint_override(rules, *[str(n) for n in names if n])


def ztsnr_alphas(sd_model: Any) -> torch.Tensor:
    """The model's ZTSNR alpha-bar in float64 on the CPU, from ``alphas_cumprod_original`` (never the fp16 downcast
    or an already-rescaled current table; the current one only when the WebUI kept no original)."""
    source = getattr(sd_model, "alphas_cumprod_original", None)
    if source is None:
        source = sd_model.alphas_cumprod
    return schedule.ztsnr_alphas_cumprod(source.detach().to("cpu", torch.float64), dtype=torch.float64)


def sampler_family(sampler: Any) -> str:
    """k-diffusion (``KDiffusionSampler`` but not ``LCMSampler``), timestep (``CompVisSampler``) or other."""
    names = {cls.__name__ for cls in type(sampler).__mro__}
    if "LCMSampler" in names:
        return OTHER
    if "KDiffusionSampler" in names:
        return KDIFFUSION
    if "CompVisSampler" in names:
        return TIMESTEP
    return OTHER


def scheduler_label(p: Any, sampler: Any) -> str | None:
    """The pass's schedule type label as the WebUI resolves it (``KDiffusionSampler.get_sigmas``), or None."""
    if getattr(p, "is_hr_pass", False):
        name = getattr(p, "hr_scheduler", None) or "Automatic"
    else:
        name = getattr(p, "scheduler", None) or "Automatic"
    if name == "Automatic":
        options = getattr(getattr(sampler, "config", None), "options", None) or {}
        name = options.get("scheduler")
    if name is None:
        return None
    try:
        from modules import sd_schedulers

        scheduler = sd_schedulers.schedulers_map.get(name)
    except ImportError:
        scheduler = None
    return scheduler.label if scheduler is not None else str(name)


def other_cfg_rescalers(p: Any) -> tuple[str, ...]:
    """Infotext keys of other extensions' CFG rescale written on ``p`` with a non-zero value (they compound)."""
    found = []
    params = getattr(p, "extra_generation_params", None) or {}
    for key in LEGACY_CFG_RESCALE_KEYS:
        try:
            if key in params and float(params[key]) != 0:
                found.append(f"{key}: {params[key]}")
        except (TypeError, ValueError):
            continue
    return tuple(found)


def sampler_facts(sampler: Any, opts: Any, p: Any = None) -> SamplerFacts:
    """Facts about the pass's sampler; with ``p``, also its resolved schedule type and other active CFG rescalers."""
    config = getattr(sampler, "config", None)
    options = getattr(config, "options", None) or {}
    discards = bool(
        options.get("discard_next_to_last_sigma", False) or getattr(opts, "always_discard_next_to_last_sigma", False)
    )
    name = getattr(config, "name", None) or type(sampler).__name__
    return SamplerFacts(
        name=name,
        family=sampler_family(sampler),
        discards_penultimate_sigma=discards,
        scheduler=scheduler_label(p, sampler) if p is not None else None,
        other_cfg_rescalers=other_cfg_rescalers(p) if p is not None else (),
        partial_denoise=p is not None and is_partial_denoise(p),
    )


def is_partial_denoise(p: Any) -> bool:
    """The pass starts part-way down its schedule: the hires pass, or any img2img (``StableDiffusionProcessingImg2Img``
    in A1111, Forge and reForge alike; matched by class name so that subclasses such as inpainting count too)."""
    if getattr(p, "is_hr_pass", False):
        return True
    return any(cls.__name__ == "StableDiffusionProcessingImg2Img" for cls in type(p).__mro__)


def record_infotext(p: Any, plan: Any) -> None:
    """Write ``plan``'s infotext keys on ``p``. The hires pass keeps the first pass's ``VPred spacing`` and writes its
    own as ``VPred hires spacing`` when it differs (with ``Auto``, e.g. exponential for DPM++ 2M, then trailing)."""
    keys = plan.infotext()
    written = p.extra_generation_params
    spacing_key = PARAMS_BY_NAME["spacing"].infotext_key
    if getattr(p, "is_hr_pass", False) and spacing_key in keys and spacing_key in written:
        own = keys.pop(spacing_key)
        if own != written[spacing_key]:
            keys[HIRES_SPACING_KEY] = own
    written.update(keys)


class SpacingSchedule:
    """``p.sampler_noise_scheduler_override``: our spacing's sigmas (trailing, or exponential from sigma_max) from the
    pass's own (possibly ZTSNR) sigma table, read when the WebUI asks (after our table is installed)."""

    def __init__(self, sampler: Any, spacing: str = TRAILING) -> None:
        self.sampler = sampler
        self.spacing = spacing
        self._sigmas = schedule.spacing_function(spacing)  # an unknown spacing fails here, not inside the WebUI

    def __call__(self, steps: int) -> torch.Tensor:
        return self._sigmas(self.sampler.model_wrap.sigmas.detach().cpu(), int(steps))


def set_spacing_override(p: Any, sampler: Any, plan: Any) -> None:
    """Our spacing for this k-diffusion pass, when the plan overrides the Schedule type (trailing or exponential)."""
    if plan.overrides_schedule:
        set_scheduler_override(p, SpacingSchedule(sampler, plan.spacing))


def restore_scheduler_override(p: Any) -> None:
    if isinstance(getattr(p, "sampler_noise_scheduler_override", None), SpacingSchedule):
        p.sampler_noise_scheduler_override = getattr(p, ATTR_SAVED_OVERRIDE, None)


def set_scheduler_override(p: Any, override: SpacingSchedule) -> None:
    current = getattr(p, "sampler_noise_scheduler_override", None)
    if not isinstance(current, SpacingSchedule):
        setattr(p, ATTR_SAVED_OVERRIDE, current)
    p.sampler_noise_scheduler_override = override
