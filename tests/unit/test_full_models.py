"""The full-size SD1.5 checkpoint generator's tensor table (``tests/webui/full_models.py``), without writing 2 GB.

Key names and shapes were checked once against ldm's own ``LatentDiffusion`` (built on the meta device in the A1111
host, with transformers' ``CLIPTextModel``): the same 1,143 keys, the same shapes. The counts below are those of the
released ``v1-5-pruned-emaonly`` checkpoint.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("vpred_full_models", REPO / "tests" / "webui" / "full_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fm = _load()


def test_counts_and_parameters_are_sd15s():
    parts = fm.table()
    assert {k: len(v) for k, v in parts.items()} == {"unet": 686, "vae": 248, "clip": 197, "schedule": 12}
    assert fm.parameter_count(parts["unet"]) == 859_520_964
    assert fm.parameter_count(parts["vae"]) == 83_653_863
    assert fm.parameter_count(parts["clip"]) == 123_060_480
    keys = [k for rows in parts.values() for k, _, _ in rows]
    assert len(keys) == len(set(keys))


def test_keys_huggingface_guess_reads():
    """The shapes Forge's model detection (huggingface_guess / ComfyUI's unet config detection) looks at."""
    shapes = {k: s for rows in fm.table().values() for k, s, _ in rows}
    unet = "model.diffusion_model."
    assert shapes[unet + "input_blocks.0.0.weight"] == (320, 4, 3, 3)
    assert shapes[unet + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 768)
    assert shapes[unet + "input_blocks.1.1.proj_in.weight"] == (320, 320, 1, 1)  # conv: SD1, not SD2's linear
    assert shapes[unet + "middle_block.1.proj_out.weight"] == (1280, 1280, 1, 1)
    assert shapes[unet + "output_blocks.2.1.conv.weight"] == (1280, 1280, 3, 3)
    assert shapes[unet + "output_blocks.5.2.conv.weight"] == (1280, 1280, 3, 3)
    assert shapes[unet + "out.2.weight"] == (4, 320, 3, 3)
    assert shapes["first_stage_model.decoder.up.1.block.0.nin_shortcut.weight"] == (256, 512, 1, 1)
    assert shapes["first_stage_model.quant_conv.weight"] == (8, 8, 1, 1)
    clip = "cond_stage_model.transformer.text_model."
    assert shapes[clip + "embeddings.token_embedding.weight"] == (49408, 768)
    assert shapes[clip + "encoder.layers.11.mlp.fc1.weight"] == (3072, 768)
    assert "model.diffusion_model.label_emb.0.0.weight" not in shapes  # no ADM: not SDXL / unCLIP


def test_schedule_is_sd15s():
    import torch

    sched = fm.schedule(torch)
    ac = sched["alphas_cumprod"]
    sigmas = ((1 - ac) / ac).sqrt()
    assert math.isclose(float(sigmas[-1]), 14.614641, rel_tol=1e-6)
    assert math.isclose(float(sigmas[0]), 0.029167, rel_tol=1e-4)
    assert all(not bool((v == 0).all()) for v in sched.values())


def test_tensors_are_seeded_by_key_and_never_all_zero():
    import torch

    sched = fm.schedule(torch)
    a = fm.make_tensor(torch, 1, "model.diffusion_model.out.2.weight", (4, 320, 3, 3), "w", sched)
    b = fm.make_tensor(torch, 1, "model.diffusion_model.out.2.weight", (4, 320, 3, 3), "w", sched)
    c = fm.make_tensor(torch, 2, "model.diffusion_model.out.2.weight", (4, 320, 3, 3), "w", sched)
    assert a.dtype == torch.float16
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.any()
    assert abs(float(a.float().std()) - 1 / math.sqrt(320 * 9)) < 0.2 / math.sqrt(320 * 9)
    norm = fm.make_tensor(torch, 1, "model.diffusion_model.out.0.weight", (320,), "nw", sched)
    assert abs(float(norm.float().mean()) - 1) < 0.01
    pos = fm.make_tensor(torch, 1, "x.position_ids", (1, 77), "pos", sched)
    assert pos.dtype == torch.int64
    assert pos.tolist() == [list(range(77))]


def test_safetensors_writer_round_trips(tmp_path):
    import torch
    from safetensors.torch import load_file

    rows = [("b.weight", (3, 2), "w"), ("a.position_ids", (1, 5), "pos"), ("c.bias", (7,), "b")]
    sched = fm.schedule(torch)
    path = tmp_path / "small.safetensors"
    fm.write_safetensors(path, rows, lambda r: fm.make_tensor(torch, 3, r[0], r[1], r[2], sched), {"k": "v"})
    loaded = load_file(str(path))
    assert set(loaded) == {"a.position_ids", "b.weight", "c.bias"}
    for key, shape, kind in rows:
        assert torch.equal(loaded[key], fm.make_tensor(torch, 3, key, shape, kind, sched))
