"""reForge adapter (Panchovix/stable-diffusion-webui-reForge ``main`` 3b56b268, ``ldm_patched`` back end): where
reForge keeps the sigma tables and the prediction type. Everything else is shared with Forge in
:mod:`lib_vpred.webui.patcher`.

- Two tables must agree: the UNet's t comes from the shared model sampling
  (``sd_model.forge_objects.unet.model.model_sampling``, ``ldm_patched/modules/model_sampling.py``:
  ``ModelSamplingDiscrete.timestep(sigma)``), while the sampler's sigma schedule comes from the pass's own A1111-style
  k-diffusion wrapper (``sampler.model_wrap``, a ``CompVisDenoiser`` over ``sd_model.alphas_cumprod``). The first is
  swapped for the duration of the sampler call, the second is set on that pass's wrapper only.
- The prediction type is the model sampling's class (``V_PREDICTION`` / ``EPS`` mixed into
  ``ModelSamplingDiscrete``), decided at load (a YAML beside the checkpoint, a ``v_pred`` key).
- reForge's own ZTSNR (``modules/processing.py``): its "Zero Terminal SNR" noise schedule option or a ``ztsnr`` key
  (``sd_model.ztsnr``), both applied around ``p.sample``; a ``zsnr`` model sampling (SDXL ``v_pred`` + ``ztsnr``
  keys) is ZTSNR from the start.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from lib_vpred import schedule
from lib_vpred.webui import patcher

#: reForge's built-in v-space CFG rescale (``extensions-builtin/reForge-RescaleCFG``): its script title; its args are
#: (enabled, version, multiplier).
RESCALE_CFG_TITLE = "RescaleCFG for reForge"

#: ``ldm_patched.modules.model_sampling`` classes that are not plain discrete eps/v sampling.
NOT_DISCRETE = frozenset(
    {"EDM", "CONST", "X0", "IMG_TO_IMG", "COSMOS_RFLOW", "ModelSamplingDiscreteEDM", "ModelSamplingContinuousEDM"}
)


class ReForge(patcher.PatcherHost):
    name = "reForge"
    sampler_wrapper_has_table = True
    #: reForge's ``last_noise_uncond`` is a slice of the combined denoised prediction, not the uncond eps
    supports_cfgpp = False

    def table(self, sd_model: Any) -> Any:
        unet = getattr(getattr(sd_model, "forge_objects", None), "unet", None)
        return getattr(getattr(unet, "model", None), "model_sampling", None)

    def prediction(self, table: Any) -> str | None:
        names = {cls.__name__ for cls in type(table).__mro__}
        if names & NOT_DISCRETE or "ModelSamplingDiscrete" not in names:
            return None
        if "V_PREDICTION" in names:
            return "v"
        return "eps" if "EPS" in names else None

    def own_ztsnr(self, sd_model: Any, opts: Any) -> bool:
        by_key = bool(getattr(sd_model, "ztsnr", False))
        return by_key or getattr(opts, "sd_noise_schedule", "Default") == patcher.HOST_ZTSNR_OPTION

    def sampler_facts(self, sampler: Any, opts: Any, p: Any = None) -> Any:
        """As on A1111, plus reForge's built-in RescaleCFG when it is on for this generation (it compounds)."""
        facts = super().sampler_facts(sampler, opts, p)
        found = builtin_rescale_cfg(p) if p is not None else None
        if found is None:
            return facts
        return dataclasses.replace(facts, other_cfg_rescalers=(*facts.other_cfg_rescalers, found))

    def stock_alphas(self, sd_model: Any) -> torch.Tensor:
        """The model's original alpha-bar (``alphas_cumprod_original``, else ``alphas_cumprod``), else from the model
        sampling's sigmas."""
        for name in ("alphas_cumprod_original", "alphas_cumprod"):
            alphas = getattr(sd_model, name, None)
            if isinstance(alphas, torch.Tensor) and alphas.numel() == schedule.NUM_TRAIN_TIMESTEPS:
                return alphas.detach().to("cpu", torch.float64)
        return schedule.alphas_cumprod_from_sigmas(self.table(sd_model).sigmas.detach().to("cpu", torch.float64))


def builtin_rescale_cfg(p: Any) -> str | None:
    """``"RescaleCFG for reForge: <multiplier>"`` when reForge's built-in RescaleCFG is enabled for ``p``, else None
    (read from its script arguments: it installs its CFG function in its own ``process_before_every_sampling``)."""
    runner = getattr(p, "scripts", None)
    args = getattr(p, "script_args", None) or ()
    for script in getattr(runner, "alwayson_scripts", None) or ():
        try:
            if script.title() != RESCALE_CFG_TITLE:
                continue
            mine = list(args[script.args_from : script.args_to])
        except Exception:
            return None
        if len(mine) >= 3 and bool(mine[0]):
            try:
                multiplier = float(mine[2])
            except (TypeError, ValueError):
                return None
            return f"{RESCALE_CFG_TITLE}: {multiplier:g}" if multiplier > 0 else None
        return None
    return None


#: The adapter interface ``scripts/vpred.py`` calls (the same names as ``lib_vpred.webui.hooks`` on A1111).
HOST = ReForge()
model_facts = HOST.model_facts
sampler_facts = HOST.sampler_facts
apply_plan = HOST.apply_plan
restore_p = HOST.restore_p
register_callbacks = HOST.register_callbacks
ztsnr_sigma_table = HOST.ztsnr_sigma_table
stock_sigma_table = HOST.stock_sigma_table
