"""modules/sd_models.py (v1.10.1): checkpoint registry, switching, and the built-in alpha-schedule override.

Models are registered by the tests (``register``) instead of being loaded from disk. ``reload_model_weights`` makes
the named checkpoint ``shared.sd_model`` (like the WebUI's cached-model switch, without a model_loaded callback).
"""

import dataclasses

import torch
from modules import shared
from modules.shared import opts

checkpoint_aliases: dict = {}
models: dict = {}


@dataclasses.dataclass(eq=True, frozen=True)
class CheckpointInfo:
    filename: str
    name: str
    title: str = ""


def register(model):
    info = model.sd_checkpoint_info
    checkpoint_aliases[info.name] = info
    checkpoint_aliases[info.title or info.name] = info
    models[info] = model
    model.alphas_cumprod_original = model.alphas_cumprod
    apply_alpha_schedule_override(model)


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    if info is None:
        name = opts.sd_model_checkpoint
        info = checkpoint_aliases.get(name) if name else None
    if info is None:
        return shared.sd_model
    if shared.sd_model is not None and shared.sd_model.sd_checkpoint_info == info:
        return shared.sd_model
    shared.sd_model = models[info]
    return shared.sd_model


def rescale_zero_terminal_snr_abar(alphas_cumprod):
    # sd_models.py:628-644: Algorithm 1 on sqrt(alpha_bar) in the input's dtype, last entry clamped.
    alphas_bar_sqrt = alphas_cumprod.sqrt()
    first = alphas_bar_sqrt[0].clone()
    last = alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last
    alphas_bar_sqrt *= first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas_bar[-1] = 4.8973451890853435e-08
    return alphas_bar


def apply_alpha_schedule_override(sd_model, p=None):
    # sd_models.py:647-667
    if not hasattr(sd_model, "alphas_cumprod") or not hasattr(sd_model, "alphas_cumprod_original"):
        return
    sd_model.alphas_cumprod = sd_model.alphas_cumprod_original.to(shared.device)
    if opts.use_downcasted_alpha_bar:
        if p is not None:
            p.extra_generation_params["Downcast alphas_cumprod"] = opts.use_downcasted_alpha_bar
        sd_model.alphas_cumprod = sd_model.alphas_cumprod.half().to(shared.device)
    if opts.sd_noise_schedule == "Zero Terminal SNR":
        if p is not None:
            p.extra_generation_params["Noise Schedule"] = opts.sd_noise_schedule
        sd_model.alphas_cumprod = rescale_zero_terminal_snr_abar(sd_model.alphas_cumprod).to(shared.device)


def dummy_tensor():
    return torch.zeros(1)
