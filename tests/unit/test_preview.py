"""``lib_vpred.preview`` against independent recomputations of the WebUI's formulas (v1.10.1):

- uniform (no schedule function) = k-diffusion ``DiscreteSchedule.get_sigmas``: ``linspace(T-1, 0, n)`` in t;
- Karras = ``k_diffusion.sampling.get_sigmas_karras(n, sigma_min, sigma_max, rho=7)`` on the model's table;
- img2img = ``setup_img2img_steps`` then ``sigmas[steps - t_enc - 1:]`` (re-derived here);
- sigma -> t = ``DiscreteSchedule.sigma_to_t(quantize=False)``.
"""

from __future__ import annotations

import math

import k_diffusion.external
import k_diffusion.sampling
import pytest
import torch

from lib_vpred import preview as pv

T = 1000


def sd_alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def stock_sigmas() -> torch.Tensor:
    a = sd_alphas_cumprod()
    return ((1 - a) / a).sqrt().float()


def ztsnr_sigmas() -> torch.Tensor:
    """Algorithm 1 of arXiv 2305.08891 in sqrt(alpha-bar), last entry clamped as in the WebUI (sd_models.py:643)."""
    s = sd_alphas_cumprod().sqrt()
    s = (s - s[-1]) * s[0] / (s[0] - s[-1])
    a = s * s
    a[-1] = 4.8973451890853435e-08
    return ((1 - a) / a).sqrt().float()


TABLES = {"stock": stock_sigmas(), "ztsnr": ztsnr_sigmas()}


def trailing_t(steps: int) -> list[int]:
    """diffusers "trailing": round(arange(T, 0, -T/steps)) - 1."""
    return [round(T - i * T / steps) - 1 for i in range(steps)]


def webui_img2img(steps: int, strength: float, fixed: bool) -> tuple[int, int]:
    """sd_samplers_common.setup_img2img_steps, re-derived."""
    if fixed:
        return int(steps / min(strength, 0.999)), steps - 1
    return steps, int(min(strength, 0.999) * steps)


@pytest.mark.parametrize("name", TABLES)
def test_sigma_to_t_matches_k_diffusion(name):
    table = TABLES[name]
    ds = k_diffusion.external.DiscreteSchedule(table, quantize=False)
    gen = torch.Generator().manual_seed(0)
    lo, hi = math.log(float(table[0])), math.log(float(table[-1]))
    sig = torch.exp(lo + (hi - lo) * torch.rand(200, generator=gen, dtype=torch.float64)).float()
    sig = torch.cat([sig, table[[0, 1, 500, 998, 999]]])
    ours = pv.sigma_to_t(sig, table)
    theirs = ds.sigma_to_t(sig).double()
    assert torch.allclose(ours, theirs, atol=2e-3), (ours - theirs).abs().max()
    assert pv.sigma_to_t(torch.tensor([0.0]), table).tolist() == [0.0]


@pytest.mark.parametrize("name", TABLES)
@pytest.mark.parametrize("steps", [1, 7, 20, 50])
def test_uniform_is_k_diffusion_get_sigmas(name, steps):
    table = TABLES[name]
    ds = k_diffusion.external.DiscreteSchedule(table, quantize=False)
    expected = ds.get_sigmas(steps).double()
    for inner in (None, ds):
        got = pv.schedule_sigmas(table, steps, schedule_fn=None, inner_model=inner)
        assert got.shape == (steps + 1,)
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_schedule_function_is_called_as_the_webui_calls_it():
    table = TABLES["ztsnr"]
    ds = k_diffusion.external.DiscreteSchedule(table, quantize=False)
    calls = []

    def fn(n, sigma_min, sigma_max, inner_model, device):
        calls.append((n, sigma_min, sigma_max, inner_model, device))
        return inner_model.get_sigmas(n)

    pv.schedule_sigmas(table, 12, schedule_fn=fn, need_inner_model=True, inner_model=ds)
    assert calls == [(12, float(table[0]), float(table[-1]), ds, torch.device("cpu"))]
    with pytest.raises(ValueError, match="inner_model"):
        pv.schedule_sigmas(table, 12, schedule_fn=fn, need_inner_model=True)


@pytest.mark.parametrize("steps", [10, 20, 30])
def test_karras_on_the_ztsnr_table(steps):
    table = TABLES["ztsnr"]
    expected = k_diffusion.sampling.get_sigmas_karras(steps, float(table[0]), float(table[-1]), rho=7.0).double()
    p = pv.build_preview(
        table,
        steps,
        schedule_fn=k_diffusion.sampling.get_sigmas_karras,
        ztsnr=True,
        scheduler_label="Karras",
    )
    assert torch.allclose(torch.tensor(p.sigmas, dtype=torch.float64), expected)
    above = int((expected[:-1] > 14.615).sum())
    ds = k_diffusion.external.DiscreteSchedule(table, quantize=False)
    noisy = int((ds.sigma_to_t(expected[:-1].float()) >= 900).sum())
    assert (p.above_stock, p.noisy) == (above, noisy)
    assert p.summary() == (
        f"{steps} steps, first at t=999 (sigma 4518.8); {above} steps above sigma 14.6, {noisy} at t >= 900"
    )
    assert len(p.warnings) == 1
    assert "Karras" in p.warnings[0]
    assert "Trailing" in p.warnings[0]


def test_karras_20_steps_matches_peers_table():
    """peers.md section 10: under ZTSNR, Karras spends 13 of 20 steps above sigma 14.6, Exponential 10."""
    table = TABLES["ztsnr"]
    karras = pv.build_preview(table, 20, schedule_fn=k_diffusion.sampling.get_sigmas_karras)
    expo = pv.build_preview(table, 20, schedule_fn=k_diffusion.sampling.get_sigmas_exponential)
    assert (karras.above_stock, expo.above_stock) == (13, 10)
    assert [pv.format_sigma(s) for s in karras.sigmas[:3]] == ["4518.8", "3319.9", "2404.8"]
    assert [pv.format_t(t) for t in karras.timesteps[:3]] == ["999", "999", "998"]


@pytest.mark.parametrize("name", TABLES)
@pytest.mark.parametrize("steps", [1, 10, 20, 33])
def test_trailing(name, steps):
    table = TABLES[name]
    p = pv.build_preview(table, steps, spacing="trailing", ztsnr=name == "ztsnr", scheduler_label="Karras")
    ts = trailing_t(steps)
    assert list(p.sigmas) == pytest.approx([float(table[t]) for t in ts] + [0.0], rel=1e-6)
    assert [round(t) for t in p.timesteps[:-1]] == ts
    assert p.warnings == ()  # trailing never wastes steps, whatever the schedule type


def test_trailing_20_summary():
    p = pv.build_preview(TABLES["ztsnr"], 20, spacing="trailing")
    assert p.summary() == "20 steps, first at t=999 (sigma 4518.8); 3 steps above sigma 14.6, 2 at t >= 900"
    stock = pv.build_preview(TABLES["stock"], 20, spacing="trailing")
    assert stock.summary() == "20 steps, first at t=999 (sigma 14.6); 0 steps above sigma 14.6, 2 at t >= 900"


@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("steps", [10, 20, 30])
@pytest.mark.parametrize("strength", [0.05, 0.3, 0.5, 0.75, 1.0])
def test_img2img_slicing(fixed, steps, strength):
    table = TABLES["ztsnr"]
    virtual, t_enc = webui_img2img(steps, strength, fixed)
    assert pv.img2img_steps(steps, strength, fixed=fixed) == (virtual, t_enc)
    full = pv.schedule_sigmas(table, virtual, spacing="trailing")
    p = pv.build_preview(table, steps, spacing="trailing", denoising_strength=strength, fixed_steps=fixed)
    assert list(p.sigmas) == full[virtual - t_enc - 1 :].tolist()
    assert p.steps == t_enc + 1
    assert p.virtual_steps == virtual
    # with trailing spacing the start is one trailing step at most above strength * 1000
    start_t = trailing_t(virtual)[virtual - t_enc - 1]
    assert round(p.start_t) == start_t
    assert strength * T - 2 <= start_t <= min(strength, 0.999) * T + T / virtual
    assert f"strength {strength:g}: {t_enc + 1} step" in p.summary()
    assert f"starting at t={start_t}" in p.summary()


def test_img2img_strength_1_is_the_full_schedule():
    table = TABLES["ztsnr"]
    p = pv.build_preview(table, 20, spacing="trailing", denoising_strength=1.0)
    assert p.sigmas == pv.build_preview(table, 20, spacing="trailing").sigmas


def test_img2img_karras_warns_about_renoising():
    """peers.md section 10: ZTSNR + Karras at strength 0.5 starts at sigma ~145.7 (t ~984)."""
    p = pv.build_preview(
        TABLES["ztsnr"],
        20,
        schedule_fn=k_diffusion.sampling.get_sigmas_karras,
        denoising_strength=0.5,
        ztsnr=True,
        scheduler_label="Karras",
    )
    assert pv.format_sigma(p.start_sigma) == "145.7"
    assert round(p.start_t) == 984
    assert "almost a full re-noise" in p.warnings[0]


def test_discard_penultimate_sigma():
    table = TABLES["ztsnr"]
    fn = k_diffusion.sampling.get_sigmas_karras
    got = pv.schedule_sigmas(table, 20, schedule_fn=fn, discard_penultimate=True)
    longer = fn(21, float(table[0]), float(table[-1])).double()
    assert got.tolist() == torch.cat([longer[:-2], longer[-1:]]).tolist()
    trailing = pv.schedule_sigmas(table, 20, spacing="trailing", discard_penultimate=True)
    assert len(trailing) == 21
    assert [round(t) for t in pv.sigma_to_t(trailing[:-1], table).tolist()] == trailing_t(21)[:-1]


def test_no_warning_without_ztsnr_or_for_timestep_uniform_types():
    table = TABLES["ztsnr"]
    fn = k_diffusion.sampling.get_sigmas_karras
    assert pv.build_preview(table, 20, schedule_fn=fn, scheduler_label="Karras").warnings == ()
    simple = pv.build_preview(table, 20, ztsnr=True, scheduler_label="Simple")
    assert simple.warnings == ()
    ays = pv.build_preview(table, 20, ztsnr=True, scheduler_label="Align Your Steps")
    assert "ignore the ZTSNR table" in ays.warnings[0]


def test_compact_rows_and_html():
    p = pv.build_preview(TABLES["ztsnr"], 20, spacing="trailing")
    rows = p.rows()
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5", "6", "…", "20"]
    assert rows[0] == ("1", "4518.8", "999")
    assert rows[-1] == ("20", pv.format_sigma(p.sigmas[19]), "49")
    short = pv.build_preview(TABLES["ztsnr"], 8, spacing="trailing")
    assert [r[0] for r in short.rows()] == [str(i) for i in range(1, 9)]
    text = p.html()
    assert text.count("<tr>") == 3
    assert "&gt;=" in text
    assert "<td>…</td>" in text


def test_zero_strength_and_bad_steps():
    p = pv.build_preview(TABLES["ztsnr"], 20, spacing="trailing", denoising_strength=0.0, fixed_steps=True)
    assert p.steps == 0
    assert "no sampling steps" in p.summary()
    with pytest.raises(ValueError, match="steps"):
        pv.schedule_sigmas(TABLES["ztsnr"], 0, spacing="trailing")


def test_formatting():
    assert [pv.format_sigma(v) for v in (4518.76, 145.66, 40.36, 2.018, 0.02916, 0.0)] == [
        "4518.8",
        "145.7",
        "40.4",
        "2.02",
        "0.0292",
        "0",
    ]
    # whole-number timesteps only (the preview once showed "997.7" next to integers)
    assert [pv.format_t(v) for v in (999.0, 998.64, 997.7, 0.0, 548.999, 0.4)] == [
        "999",
        "999",
        "998",
        "0",
        "549",
        "0",
    ]


@pytest.mark.parametrize(
    ("n", "word"),
    [(8, "an"), (11, "an"), (18, "an"), (80, "an"), (800, "an"), (1, "a"), (20, "a"), (110, "a"), (111, "a")],
)
def test_article_before_a_step_count(n, word):
    assert pv.article(n) == word
    preview = pv.build_preview(TABLES["ztsnr"], 4, spacing="trailing", denoising_strength=0.5, fixed_steps=True)
    assert f" of {pv.article(preview.virtual_steps)} {preview.virtual_steps}-step " in preview.summary()


def test_module_is_pure():
    """preview.py may import only the standard library, torch and the project's own pure modules."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(pv.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
            if node.module and node.module.startswith("lib_vpred"):
                assert node.module in ("lib_vpred", "lib_vpred.plan", "lib_vpred.schedule", "lib_vpred.params")
    assert imported <= {"__future__", "dataclasses", "html", "math", "collections", "typing", "torch", "lib_vpred"}


@pytest.mark.parametrize(
    ("scheduler", "sampler", "warns"),
    [
        ("Karras", "Euler", True),
        ("Karras", None, True),
        ("Karras", "DPM++ 2M", False),  # README: fine with DPM++ samplers (bench_fidelity)
        ("Exponential", "DPM++ SDE", False),
        ("Beta", "DPM++ 2M", True),  # bad with every sampler
        ("KL Optimal", "DPM++ 2M SDE", True),
        ("Simple", "Euler", False),
    ],
)
def test_schedule_warnings_follow_the_plan_rule(scheduler, sampler, warns):
    """One rule for the preview and the plan (``plan.schedule_type_loses_detail``), as the README states it."""
    from lib_vpred.params import VPredParams
    from lib_vpred.plan import KDIFFUSION, ModelFacts, SamplerFacts, decide, schedule_type_loses_detail

    p = pv.build_preview(
        TABLES["ztsnr"],
        20,
        schedule_fn=k_diffusion.sampling.get_sigmas_karras,
        ztsnr=True,
        scheduler_label=scheduler,
        sampler_name=sampler,
    )
    assert bool(p.warnings) == warns
    assert schedule_type_loses_detail(scheduler, sampler) == warns
    plan = decide(
        VPredParams(spacing="Schedule type"),
        ModelFacts(webui_prediction="v", family="SD1"),
        SamplerFacts(name=sampler or "Euler", family=KDIFFUSION, scheduler=scheduler),
    )
    assert any(w.startswith("schedule type ") for w in plan.warnings) == warns


def test_preview_from_timesteps():
    table = TABLES["ztsnr"]
    p = pv.preview_from_timesteps(table, [999, 899, 99], virtual_steps=3)
    assert p.steps == 3
    assert p.timesteps == (999.0, 899.0, 99.0, 0.0)
    assert p.sigmas[0] == pytest.approx(float(table[999]))
    assert p.summary().startswith("3 steps, first at t=999 (sigma 4518.8)")
