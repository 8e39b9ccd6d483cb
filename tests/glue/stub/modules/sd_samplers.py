"""modules/sd_samplers.py: ``create_sampler`` builds a new sampler object for every pass (sd_samplers.py:33-44)."""

from modules import sd_samplers_common, sd_samplers_kdiffusion, sd_samplers_lcm, sd_samplers_timesteps

all_samplers = [
    *sd_samplers_kdiffusion.samplers_data_k_diffusion,
    *sd_samplers_timesteps.samplers_data_timesteps,
    sd_samplers_common.SamplerData("LCM", lambda model: sd_samplers_lcm.LCMSampler("sample_euler", model), [], {}),
]
all_samplers_map = {x.name: x for x in all_samplers}


def find_sampler_config(name):
    return all_samplers_map.get(name)


def create_sampler(name, model):
    config = find_sampler_config(name)
    assert config is not None, f"bad sampler name: {name}"
    sampler = config.constructor(model)
    sampler.config = config
    return sampler
