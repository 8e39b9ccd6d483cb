"""Forge adapter (Stable Diffusion WebUI Forge, "Forge2" back end, dfdcbab): where Forge keeps the sigma table and the
prediction type. Everything else is shared with reForge in :mod:`lib_vpred.webui.patcher`.

- The table is the shared predictor's (``sd_model.forge_objects.unet.model.predictor``, ``backend/modules/
  k_prediction.py``): ``sigmas`` / ``log_sigmas`` / ``set_sigmas``, read by the k-diffusion wrapper
  ``ForgeScheduleLinker`` (read-only properties) and by ``KModel.apply_model`` for the UNet's t.
- The prediction type is the predictor's ``prediction_type`` ("v_prediction" / "epsilon"; a YAML beside the
  checkpoint or a ``v_pred`` key decides it at load).
- Forge's own ZTSNR (``processing.py``): its "Zero Terminal SNR" noise schedule option or a ``ztsnr`` key
  (``model_config.ztsnr``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lib_vpred import schedule
from lib_vpred.webui import patcher

#: ``backend.modules.k_prediction`` names (AbstractPrediction.prediction_type) -> the extension's names.
FORGE_PREDICTIONS = {"v_prediction": "v", "epsilon": "eps"}


class Forge(patcher.PatcherHost):
    name = "Forge"
    can_set_prediction = True

    def table(self, sd_model: Any) -> Any:
        unet = getattr(getattr(sd_model, "forge_objects", None), "unet", None)
        return getattr(getattr(unet, "model", None), "predictor", None)

    def prediction(self, table: Any) -> str | None:
        return FORGE_PREDICTIONS.get(getattr(table, "prediction_type", None))

    def own_ztsnr(self, sd_model: Any, opts: Any) -> bool:
        by_key = bool(getattr(getattr(sd_model, "model_config", None), "ztsnr", False))
        return by_key or getattr(opts, "sd_noise_schedule", "Default") == patcher.HOST_ZTSNR_OPTION

    def stock_alphas(self, sd_model: Any) -> torch.Tensor:
        """The predictor's ``alphas_cumprod`` buffer (``set_sigmas`` never changes it), else from its sigmas."""
        table = self.table(sd_model)
        alphas = getattr(table, "alphas_cumprod", None)
        if isinstance(alphas, torch.Tensor) and alphas.numel() == table.sigmas.numel():
            return alphas.detach().to("cpu", torch.float64)
        return schedule.alphas_cumprod_from_sigmas(table.sigmas.detach().to("cpu", torch.float64))

    def set_prediction(self, table: Any, prediction: str) -> Callable[[], None] | None:
        saved = table.prediction_type
        table.prediction_type = {"v": "v_prediction", "eps": "epsilon"}[prediction]

        def undo() -> None:
            table.prediction_type = saved

        return undo


#: The adapter interface ``scripts/vpred.py`` calls (the same names as ``lib_vpred.webui.hooks`` on A1111).
HOST = Forge()
model_facts = HOST.model_facts
sampler_facts = HOST.sampler_facts
apply_plan = HOST.apply_plan
restore_p = HOST.restore_p
register_callbacks = HOST.register_callbacks
ztsnr_sigma_table = HOST.ztsnr_sigma_table
stock_sigma_table = HOST.stock_sigma_table
