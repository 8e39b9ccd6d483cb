"""A "Trailing" entry in the WebUI's Schedule type list (dropdown, XYZ, infotext, API ``scheduler``).

Usable without the panel: it spaces steps at the trailing timesteps (paper Table 2) of the pass's own sigma table,
so it follows the ZTSNR table when one is installed. Registered once at script import (before the UI and before
``sd_samplers.get_sampler_and_scheduler`` caches anything), guarded against duplicates, removed on script unload.
"""

from __future__ import annotations

from typing import Any

import torch

from lib_vpred import schedule

NAME = "trailing"
LABEL = "Trailing"


def trailing_scheduler(n: int, sigma_min: float, sigma_max: float, inner_model: Any, device: Any) -> torch.Tensor:
    """``sd_schedulers.Scheduler`` function: trailing sigmas from ``inner_model.sigmas`` (ignores min/max)."""
    return schedule.trailing_sigmas(inner_model.sigmas.detach().cpu(), int(n)).to(device)


def register(sd_schedulers: Any) -> bool:
    """Append the scheduler unless present. True when this call added it."""
    if NAME in sd_schedulers.schedulers_map or any(s.name == NAME for s in sd_schedulers.schedulers):
        return False
    scheduler = sd_schedulers.Scheduler(NAME, LABEL, trailing_scheduler, need_inner_model=True)
    sd_schedulers.schedulers.append(scheduler)
    sd_schedulers.schedulers_map[NAME] = scheduler
    sd_schedulers.schedulers_map[LABEL] = scheduler
    return True


def unregister(sd_schedulers: Any) -> None:
    """Remove our entry (``on_script_unloaded``), leaving the list as the WebUI built it."""
    sd_schedulers.schedulers[:] = [s for s in sd_schedulers.schedulers if s.name != NAME]
    for key in (NAME, LABEL):
        scheduler = sd_schedulers.schedulers_map.get(key)
        if scheduler is not None and scheduler.name == NAME:
            del sd_schedulers.schedulers_map[key]
