"""modules/shared.py: ``opts``, ``state``, ``sd_model`` (the currently loaded model)."""

from modules import devices

# Option defaults as in v1.10.1 shared_options.py for every option the samplers and the extension read.
OPTION_DEFAULTS = {
    "sd_model_checkpoint": None,
    "sd_noise_schedule": "Default",
    "use_downcasted_alpha_bar": False,
    "always_discard_next_to_last_sigma": False,
    "enable_quantization": False,
    "skip_early_cond": 0.0,
    "s_min_uncond_all": False,
    "pad_cond_uncond": False,
    "pad_cond_uncond_v0": False,
    "batch_cond_uncond": True,
    "use_old_karras_scheduler_sigmas": False,
    "sigma_min": 0.0,
    "sigma_max": 0.0,
    "rho": 0.0,
    "sgm_noise_multiplier": False,
    "img2img_extra_noise": 0.0,
    "img2img_fix_steps": False,
    "refiner_switch_by_sample_steps": False,
    "eta_ancestral": 1.0,
    "eta_ddim": 0.0,
    "live_preview_content": "Prompt",
}


class Options:
    def __init__(self):
        object.__setattr__(self, "data", dict(OPTION_DEFAULTS))

    def __getattr__(self, item):
        data = object.__getattribute__(self, "data")
        if item in data:
            return data[item]
        raise AttributeError(item)

    def __setattr__(self, key, value):
        self.data[key] = value

    def set(self, key, value, is_api=False, run_callbacks=True):
        self.data[key] = value
        return True

    def get_default(self, key):
        return OPTION_DEFAULTS.get(key)


class State:
    def __init__(self):
        self.interrupted = False
        self.skipped = False
        self.stopping_generation = False
        self.sampling_step = 0
        self.sampling_steps = 0
        self.job_count = 0


class TotalTQDM:
    def update(self):
        pass

    def clear(self):
        pass


opts = Options()
state = State()
total_tqdm = TotalTQDM()
device = devices.cpu
sd_model = None
