"""Glue tier: XYZ axes, Settings (defaults, per-checkpoint overrides), the Trailing schedule type, warnings."""

from __future__ import annotations

import pytest
import torch

from lib_vpred.schedule import (
    scaled_linear_alphas_cumprod,
    sigmas_from_alphas_cumprod,
    spaced_timesteps,
    ztsnr_alphas_cumprod,
)


def _cells(w, model, axis, values, **kwargs):
    base = w.processing.StableDiffusionProcessingTxt2Img(sd_model=model, prompt="a cat", steps=4, **kwargs)
    base.scripts = w.runners[False]
    base.script_args = (None, *w.default_args())
    return w.xyz_grid.run_cells(base, axis, values, w.processing.process_images)


def test_xyz_axes_registered_once_with_choices(make_webui):
    w = make_webui(True)
    labels = [o.label for o in w.xyz_grid.axis_options if o.label.startswith("[VPred]")]
    assert labels == [
        "[VPred] Enable",
        "[VPred] Prediction type",
        "[VPred] Zero terminal SNR",
        "[VPred] Timestep spacing",
        "[VPred] CFG rescale φ",
    ]
    # on_before_ui runs again on "Reload UI": no duplicates
    w.script_callbacks._run("before_ui")
    assert len([o for o in w.xyz_grid.axis_options if o.label.startswith("[VPred]")]) == 5
    ztsnr_axis = next(o for o in w.xyz_grid.axis_options if o.label == "[VPred] Zero terminal SNR")
    assert ztsnr_axis.choices() == ["Auto", "On", "Off"]


def test_xyz_cells_get_their_own_values_and_the_base_p_is_untouched(make_webui):
    w = make_webui(True)
    vm = w.add_model("fluffy-vpred", parameterization="v", yaml_v=True)
    results = _cells(w, vm, "[VPred] CFG rescale φ", ["0.2", "0.5", "0"])
    assert [r[1].extra_generation_params.get("VPred CFG rescale") for r in results] == [0.2, 0.5, 0.0]
    ztsnr = _cells(w, vm, "[VPred] Zero terminal SNR", ["On", "Off"])
    assert ztsnr[0][1].extra_generation_params["VPred ZTSNR"] == "on"
    assert ztsnr[1][1].extra_generation_params["VPred ZTSNR"] == "off"
    # a plain run afterwards uses the panel values again
    _p, out = w.run("txt2img", prompt="a cat", steps=4)
    assert out.extra_generation_params["VPred CFG rescale"] == 0.7
    assert not w.errors.reported


def test_xyz_rejects_bad_values_before_any_image(make_webui):
    w = make_webui(True)
    vm = w.add_model("fluffy-vpred", parameterization="v", yaml_v=True)
    with pytest.raises(RuntimeError, match=r"cfg_rescale: expected a number from 0 to 1"):
        _cells(w, vm, "[VPred] CFG rescale φ", ["0.5", "3"])
    assert vm.calls == []


def test_settings_labels_are_found_by_search_and_marked_for_reload(make_webui):
    """Searching Settings (the label text) for "ztsnr" or "v-pred" finds every option; the defaults, read when the UI
    is built, carry the WebUI's "(requires Reload UI)" marker; the options read at generation time do not."""
    w = make_webui(True)
    ours = {k: v for k, v in w.shared.opts.data_labels.items() if k.startswith("vpred_")}
    assert len(ours) == 7
    for key, info in ours.items():
        assert "ztsnr" in info.label.lower(), key
        assert "v-pred" in info.label.lower(), key
        assert ("(requires Reload UI)" in info.comment_after) == key.startswith("vpred_default_"), key


def test_settings_defaults_drive_the_panel_and_api_defaults(make_webui, monkeypatch):
    w = make_webui(True)
    assert w.default_args() == [True, "Auto", "Auto", "Auto", 0.7]
    w.shared.opts.vpred_default_cfg_rescale = 0.3
    w.shared.opts.vpred_default_spacing = "Schedule type"
    w.shared.opts.vpred_default_ztsnr = "not a choice"  # a broken stored value falls back, never breaks the UI
    import gradio as gr

    runner = w.runners[False].__class__(False)
    runner.add_script(w.script_module.VPredScript, "vpred.py")
    with gr.Blocks():
        runner.setup_ui()
    assert [c.value for c in runner.inputs[1:]] == [True, "Auto", "Auto", "Schedule type", 0.3]


def test_per_checkpoint_override_beats_detection_when_auto(make_webui):
    w = make_webui(True)
    eps_named_v = w.add_model("mislabeled", parameterization="eps")
    w.shared.opts.vpred_checkpoint_overrides = "# comment\nmislabel*: prediction=v, ztsnr=off\n"
    _, out = w.run("txt2img", prompt="a cat", steps=4)
    assert out.extra_generation_params["VPred prediction"] == "v-prediction (auto)"
    assert out.extra_generation_params["VPred ZTSNR"] == "off (auto)"
    # the pass's wrapper became the v wrapper, the model itself still says eps
    assert eps_named_v.parameterization == "eps"
    # the control wins over the override
    _p, out = w.run("txt2img", prompt="a cat", steps=4, script_args=[True, "eps"])
    assert out.extra_generation_params == {"VPred prediction": "eps"}  # recorded: pasting reproduces it


def test_sd1_assumption_can_be_switched_off(make_webui):
    w = make_webui(True)
    w.add_model("fluffy-vpred", parameterization="v", yaml_v=True)
    w.shared.opts.vpred_assume_sd1_ztsnr = False
    _p, out = w.run("txt2img", prompt="a cat", steps=4)
    assert out.extra_generation_params["VPred ZTSNR"] == "off (auto)"
    assert out.extra_generation_params["VPred prediction"] == "v-prediction (auto)"


def test_trailing_schedule_type_works_without_the_panel(make_webui):
    w = make_webui(True)
    from modules import sd_schedulers

    assert [s.label for s in sd_schedulers.schedulers].count("Trailing") == 1
    eps = w.add_model("plain-eps", parameterization="eps")
    steps = 5
    _p, out = w.run("txt2img", prompt="a cat", steps=steps, scheduler="Trailing", script_args=[False])
    # stock (eps, no ZTSNR) table at the trailing timesteps: the model sees exactly those t, first 999
    ts = torch.stack([c[0] for c in eps.calls])
    assert ts.tolist() == [float(t) for t in spaced_timesteps(steps, "trailing")]
    assert out.extra_generation_params["Schedule type"] == "Trailing"


def test_trailing_schedule_type_follows_the_ztsnr_table(make_webui):
    w = make_webui(True)
    w.add_model("fluffy-vpred", parameterization="v", yaml_v=True)
    seen = []
    w.script_callbacks.on_cfg_denoiser(lambda params: seen.append(float(params.sigma[0])))
    w.run(
        "txt2img",
        prompt="a cat",
        steps=4,
        scheduler="Trailing",
        script_args=[True, "Auto", "Auto", "Schedule type", 0.0],
    )
    expected = sigmas_from_alphas_cumprod(ztsnr_alphas_cumprod(scaled_linear_alphas_cumprod(), dtype=torch.float64))
    assert abs(seen[0] - float(expected[-1])) < 1e-2 * float(expected[-1])


def test_unregister_on_script_unload_restores_the_list(make_webui):
    w = make_webui(True)
    from modules import sd_schedulers

    w.script_callbacks._run("script_unloaded")
    assert "Trailing" not in [s.label for s in sd_schedulers.schedulers]
    assert "trailing" not in sd_schedulers.schedulers_map


def test_karras_under_ztsnr_warns_once_with_the_fix(make_webui, capsys):
    w = make_webui(True)
    w.add_model("fluffy-vpred", parameterization="v", yaml_v=True)
    args = [True, "Auto", "Auto", "Schedule type", 0.7]
    w.run("txt2img", prompt="a cat", steps=4, sampler_name="Euler", scheduler="Karras", script_args=args)
    w.run("txt2img", prompt="a cat", steps=4, sampler_name="Euler", scheduler="Karras", script_args=args)
    printed = capsys.readouterr().out
    assert printed.count("schedule type Karras puts most steps far above sigma 14.6") == 1
    assert "set Timestep spacing to Auto" in printed
    # DPM++ 2M with its default Karras measured fine under ZTSNR (bench_trained, bench_fidelity): no warning there
    w.run("txt2img", prompt="a cat", steps=4, sampler_name="DPM++ 2M", script_args=args)
    assert "puts most steps" not in capsys.readouterr().out


def test_another_cfg_rescaler_is_reported(make_webui, capsys):
    w = make_webui(True)
    w.add_model("fluffy-vpred", parameterization="v", yaml_v=True)

    class OtherRescaler(w.script_module.scripts.Script):
        def title(self):
            return "CFG Rescale Extension"

        def show(self, is_img2img):
            return w.script_module.scripts.AlwaysVisible

        def process(self, p, *args):
            p.extra_generation_params["CFG Rescale"] = 0.5

    runner = w.runners[False]
    runner.add_script(OtherRescaler, "CFGRescale.py")
    other = runner.alwayson_scripts[-1]
    other.args_from = other.args_to = len(runner.inputs)
    w.run("txt2img", prompt="a cat", steps=4)
    assert "another CFG rescale is active (CFG Rescale: 0.5)" in capsys.readouterr().out
