"""modules/sd_schedulers.py (v1.10.1), the schedulers the tests use: Automatic/Uniform, Karras, Exponential, Simple."""

import dataclasses

import k_diffusion.sampling
import torch


@dataclasses.dataclass
class Scheduler:
    name: str
    label: str
    function: object = None
    default_rho: float = -1
    need_inner_model: bool = False
    aliases: list = None


def uniform(n, sigma_min, sigma_max, inner_model, device):
    return inner_model.get_sigmas(n).to(device)


def simple_scheduler(n, sigma_min, sigma_max, inner_model, device):
    # sd_schedulers.py:81: sigmas[-(1 + int(x * len / n))] for x in range(n), then 0
    sigs = []
    ss = len(inner_model.sigmas) / n
    for x in range(n):
        sigs += [float(inner_model.sigmas[-(1 + int(x * ss))])]
    sigs += [0.0]
    return torch.FloatTensor(sigs).to(device)


schedulers = [
    Scheduler("automatic", "Automatic", None),
    Scheduler("uniform", "Uniform", uniform, need_inner_model=True),
    Scheduler("karras", "Karras", k_diffusion.sampling.get_sigmas_karras, default_rho=7.0),
    Scheduler("exponential", "Exponential", k_diffusion.sampling.get_sigmas_exponential),
    Scheduler("simple", "Simple", simple_scheduler, need_inner_model=True),
]
schedulers_map = {**{x.name: x for x in schedulers}, **{x.label: x for x in schedulers}}
