"""Glue tier: DDIM, DDIM CFG++, PLMS and UniPC through scripts/vpred.py and the stand-in WebUI.

First model call at t = 999, model calls == steps (txt2img, and img2img at full strength), the noise level of img2img
equal to its first call, the ZTSNR table on the model for exactly the sampling call (restored after an exception too),
eps checkpoints bit-identical with and without the extension, v output finite and closer to a float64 reference than
the WebUI's eps route.
"""

from __future__ import annotations

import pytest
import torch

from lib_vpred import schedule
from tests.glue.conftest import images

SAMPLERS = ["DDIM", "DDIM CFG++", "PLMS", "UniPC"]
ZTSNR_LAST = schedule.ZTSNR_TERMINAL_ALPHA_BAR


def v_webui(make_webui, with_extension=True):
    w = make_webui(with_extension)
    m = w.add_model("fluffy", parameterization="v", yaml_v=True)
    return w, m


def record_tables(model):
    """Record alphas_cumprod[-1] at every model call."""
    seen = []
    original = model.apply_model

    def apply_model(x, t, cond):
        seen.append(float(model.alphas_cumprod[-1]))
        return original(x, t, cond)

    model.apply_model = apply_model
    return seen


def call_ts(model):
    return [float(c[0]) for c in model.calls]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("steps", [20, 30])
def test_txt2img_first_call_999_and_steps_calls(make_webui, sampler, steps):
    w, m = v_webui(make_webui)
    original_table = m.alphas_cumprod
    seen = record_tables(m)
    p, out = w.run("txt2img", sampler_name=sampler, steps=steps)
    ts = call_ts(m)
    assert ts[0] == pytest.approx(999.0)
    assert len(ts) == steps
    assert images(out).isfinite().all()
    assert all(v == pytest.approx(ZTSNR_LAST, rel=1e-6) for v in seen)  # ZTSNR during the call
    assert m.alphas_cumprod is original_table  # restored, same object
    assert p.extra_generation_params["VPred spacing"] == "trailing (auto)"


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_stock_timestep_samplers_never_reach_999(make_webui, sampler):
    w, m = v_webui(make_webui, with_extension=False)
    w.run("txt2img", sampler_name=sampler, steps=20)
    ts = call_ts(m)
    if sampler == "UniPC":
        assert ts[0] == pytest.approx(999.0)  # UniPC's own spacing
    else:
        assert ts[0] == 951.0
        assert len(ts) == (20 if sampler == "PLMS" else 19)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_img2img_calls_and_first_t(make_webui, sampler, strength):
    w, m = v_webui(make_webui)
    original_table = m.alphas_cumprod
    _p, out = w.run("img2img", sampler_name=sampler, steps=20, denoising_strength=strength)
    ts = call_ts(m)
    t_enc = int(min(strength, 0.999) * 20)
    assert len(ts) == t_enc + 1
    if strength == 1.0:
        assert ts[0] == pytest.approx(999.0)
    else:
        assert abs(ts[0] - 1000 * strength) <= 50
    assert images(out).isfinite().all()
    assert m.alphas_cumprod is original_table


@pytest.mark.parametrize("sampler", ["DDIM", "PLMS", "UniPC"])
def test_img2img_noise_level_matches_first_call(make_webui, sampler, monkeypatch):
    """sample_img2img noises with alphas_cumprod[timesteps[t_enc]]: that must be the level of the first model call."""
    w, m = v_webui(make_webui)
    from modules import sd_samplers_timesteps

    seen = {}
    original = sd_samplers_timesteps.CompVisSampler.sample_img2img

    def spy(self, p, x, noise, *args, **kwargs):
        steps_t_enc = __import__("modules.sd_samplers_common", fromlist=["x"]).setup_img2img_steps(
            p, kwargs.get("steps")
        )
        seen["t"] = int(self.get_timesteps(p, steps_t_enc[0])[steps_t_enc[1]])
        return original(self, p, x, noise, *args, **kwargs)

    monkeypatch.setattr(sd_samplers_timesteps.CompVisSampler, "sample_img2img", spy)
    w.run("img2img", sampler_name=sampler, steps=20, denoising_strength=0.6)
    assert call_ts(m)[0] == pytest.approx(seen["t"])


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("kind", ["txt2img", "img2img"])
def test_table_restored_after_exception_mid_sampling(make_webui, sampler, kind):
    w, m = v_webui(make_webui)
    original_table = m.alphas_cumprod
    original = m.apply_model
    count = []

    def failing(x, t, cond):
        count.append(1)
        if len(count) == 3:
            raise RuntimeError("boom")
        return original(x, t, cond)

    m.apply_model = failing
    with pytest.raises(RuntimeError, match="boom"):
        w.run(kind, sampler_name=sampler, steps=10)
    assert m.alphas_cumprod is original_table
    assert float(m.alphas_cumprod[-1]) > 1e-3


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("kind", ["txt2img", "img2img"])
def test_eps_checkpoint_bit_identical(make_webui, sampler, kind):
    outs = []
    for with_extension in (True, False):
        w = make_webui(with_extension)
        w.add_model("eps")
        _, out = w.run(kind, sampler_name=sampler, steps=12, prompt="a cat", negative_prompt="blur")
        outs.append(images(out))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_v_model_extension_off_is_stock(make_webui, sampler):
    outs = []
    for with_extension in (True, False):
        w, _m = v_webui(make_webui, with_extension)
        args = w.default_args() if with_extension else None
        if with_extension:
            args[0] = False  # master switch off
        _, out = w.run("txt2img", sampler_name=sampler, steps=10, script_args=args)
        outs.append(images(out))
    assert torch.equal(outs[0], outs[1])


def test_ddim_cfgpp_has_no_rescale_and_says_so(make_webui):
    w, _m = v_webui(make_webui)
    p, _ = w.run("txt2img", sampler_name="DDIM CFG++", steps=10)
    assert p.extra_generation_params["VPred CFG rescale"] == 0.0


def test_v_output_closer_to_float64_reference_than_eps_route(make_webui):
    """DDIM, ZTSNR, trailing, phi 0, one image: the extension (v route) vs the WebUI's own DDIM loop with the same
    table and timesteps (eps route), both against the same computation in float64."""
    from lib_vpred import timestep

    w, m = v_webui(make_webui)
    args = w.default_args()
    args[4] = 0.0  # no CFG rescale: the reference is plain CFG
    p, out = w.run("txt2img", sampler_name="DDIM", steps=20, script_args=args, prompt="a", negative_prompt="b")
    ours = images(out).double()

    c = m.get_learned_conditioning(["a"]).double()
    uc = m.get_learned_conditioning(["b"]).double()
    table = schedule.ztsnr_alphas_cumprod(m.alphas_cumprod_original.double(), dtype=torch.float64).float().double()

    def cfg_v(x, t):
        v = m.apply_model(
            torch.cat([x, x]), torch.full((2,), float(t), dtype=torch.float64), {"c_crossattn": [torch.cat([c, uc])]}
        )
        v_c, v_u = v[:1], v[1:]
        g = v_u + (v_c - v_u) * p.cfg_scale
        return g, g

    x_T = p.noise(p.latent_shape()).double()
    ts = timestep.trailing_timesteps(20, timestep.DDIM)
    ref = timestep.ddim_sample_v(cfg_v, x_T, ts, table)

    def cfg_eps_route(x, t):  # the WebUI's loop in float32: v -> eps (wrapper), then x0 = (x - s eps) / sqrt(a)
        x32 = x.float()
        a = table.float()[t]
        v, _ = cfg_v(x32.double(), t)
        return a.sqrt() * v.float() + (1 - a).sqrt() * x32

    x = x_T.float()
    for index in range(len(ts) - 1, 0, -1):
        t, tp = int(ts[index]), int(ts[index - 1])
        a, ap = table.float()[t], table.float()[tp]
        eps = cfg_eps_route(x, t)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = ap.sqrt() * x0 + (1 - ap).sqrt() * eps
    err_ours = (ours - ref).abs().max().item()
    err_eps = (x.double() - ref).abs().max().item()
    print(f"glue DDIM 20 steps ZTSNR: v route error {err_ours:.2e}, eps route error {err_eps:.2e} (vs float64)")
    assert ours.isfinite().all()
    assert err_ours < 1e-4
    assert err_ours < err_eps
