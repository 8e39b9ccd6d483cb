"""modules/script_callbacks.py (v1.10.1): callback registries; a callback's exception is reported, never raised."""

import os
import sys
from collections import namedtuple

from modules import errors

ScriptCallback = namedtuple("ScriptCallback", ["script", "callback", "name"])


class CFGDenoiserParams:
    """script_callbacks.py:45. ``x``, ``image_cond``, ``sigma``, ``text_cond``, ``text_uncond`` are read back."""

    def __init__(
        self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None
    ):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


_CATEGORIES = (
    "cfg_denoiser",
    "cfg_after_cfg",
    "app_started",
    "model_loaded",
    "infotext_pasted",
    "ui_settings",
    "before_ui",
    "script_unloaded",
)
callback_map = {f"callbacks_{c}": [] for c in _CATEGORIES}


def clear_callbacks():
    for callbacks in callback_map.values():
        callbacks.clear()


def _add(category, callback, name):
    # The registering file, as inspect.stack()[2].filename, without building source context for every frame.
    filename = os.path.basename(sys._getframe(2).f_code.co_filename)
    callback_map[f"callbacks_{category}"].append(ScriptCallback(filename, callback, name))


def _run(category, *args):
    for c in callback_map[f"callbacks_{category}"]:
        try:
            c.callback(*args)
        except Exception:
            errors.report(f"Error executing callback {category}_callback for {c.script}", exc_info=True)


def cfg_denoiser_callback(params):
    _run("cfg_denoiser", params)


def cfg_after_cfg_callback(params):
    _run("cfg_after_cfg", params)


def app_started_callback(demo, app):
    _run("app_started", demo, app)


def infotext_pasted_callback(infotext, params):
    _run("infotext_pasted", infotext, params)


def model_loaded_callback(sd_model):
    _run("model_loaded", sd_model)


def script_unloaded_callback():
    _run("script_unloaded")


def on_cfg_denoiser(callback, *, name=None):
    _add("cfg_denoiser", callback, name)


def on_cfg_after_cfg(callback, *, name=None):
    _add("cfg_after_cfg", callback, name)


def on_app_started(callback, *, name=None):
    _add("app_started", callback, name)


def on_model_loaded(callback, *, name=None):
    _add("model_loaded", callback, name)


def on_infotext_pasted(callback, *, name=None):
    _add("infotext_pasted", callback, name)


def on_ui_settings(callback, *, name=None):
    _add("ui_settings", callback, name)


def on_before_ui(callback, *, name=None):
    _add("before_ui", callback, name)


def on_script_unloaded(callback, *, name=None):
    _add("script_unloaded", callback, name)
