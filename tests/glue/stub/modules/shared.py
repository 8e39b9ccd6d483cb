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


class OptionInfo:
    """modules/options.py:13: a setting's default, label, component and section."""

    def __init__(
        self,
        default=None,
        label="",
        component=None,
        component_args=None,
        onchange=None,
        section=None,
        refresh=None,
        comment_before="",
        comment_after="",
        infotext=None,
        restrict_api=False,
        category_id=None,
    ):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.section = section
        self.comment_after = comment_after
        self.do_not_save = False

    def needs_reload_ui(self):
        self.comment_after += " <span class='info'>(requires Reload UI)</span>"
        return self


class Options:
    def __init__(self):
        object.__setattr__(self, "data", dict(OPTION_DEFAULTS))
        object.__setattr__(self, "data_labels", {})

    def add_option(self, key, info):
        # options.py:256: a new option takes its default unless a value is stored already
        self.data_labels[key] = info
        if key not in self.data and not info.do_not_save:
            self.data[key] = info.default

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
        info = self.data_labels.get(key)
        return info.default if info is not None else OPTION_DEFAULTS.get(key)


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
