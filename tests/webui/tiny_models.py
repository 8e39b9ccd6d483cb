"""Generate tiny random-weight SD1.x checkpoints for the live WebUI test tier.

Usage (inside the WebUI's venv, so torch, transformers, omegaconf and the ldm modules are importable)::

    /work/webui/venv/bin/python tests/webui/tiny_models.py OUT_DIR [--webui /work/webui] [--clip-dir DIR] [--seed 1234]

Writes into OUT_DIR (created if missing):

- ``tiny-clip/``              a tiny CLIP text encoder for ldm's ``FrozenCLIPEmbedder`` (``config.json``,
                              ``pytorch_model.bin`` and the real CLIP BPE tokenizer ``vocab.json`` / ``merges.txt``,
                              derived from open_clip's bundled ``bpe_simple_vocab_16e6.txt.gz``). ``--clip-dir`` puts it
                              elsewhere. Its weights are stored as ``.bin`` on purpose: the WebUI lists every
                              ``*.safetensors`` / ``*.ckpt`` under ``--ckpt-dir`` (recursively) as a checkpoint.
- ``tiny-vpred.safetensors`` + ``tiny-vpred.yaml``   ``model.params.parameterization: "v"``
- ``tiny-eps.safetensors``   + ``tiny-eps.yaml``     no ``parameterization`` key (ldm default ``eps``), like the stock
                                                     ``configs/v1-inference.yaml``

Both checkpoints hold the same tensors (one full LatentDiffusion state dict with the key names the WebUI expects:
``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.text_model.*``, plus the
``betas`` / ``alphas_cumprod`` ... buffers). Only the safetensors ``__metadata__`` differs (``tiny_models.name``), so
the two files have different sha256 hashes and the WebUI does not alias one to the other.

Both YAMLs are derived from the WebUI's stock ``configs/v1-inference.yaml`` (linear_start 0.00085, linear_end 0.012,
1000 timesteps, scale_factor 0.18215 unchanged) with a shrunken architecture:

- text encoder: CLIPTextModel, hidden 32, 2 layers, 2 heads, 77 positions, vocab 49408;
- UNet: model_channels 32, channel_mult [1, 2], 1 res block, cross-attention at every level, context_dim 32;
- VAE: ch 32, ch_mult [1, 1, 1, 1] (so the latent factor stays 8, as the WebUI assumes), z_channels 4, embed_dim 4.

GroupNorm(32) in ldm means every channel count must be a multiple of 32. The WebUI works in multiples of 8 pixels;
16x16 .. 72x72 were tried and work (64x64 is the size the live tier uses).

Each YAML's ``cond_stage_config.params.version`` is the absolute path of the tiny CLIP directory: the WebUI (started
with ``--do-not-download-clip``) builds ``CLIPTextModel`` from that directory's ``config.json`` and loads the tokenizer
from it with ``CLIPTokenizer.from_pretrained``; the text-encoder weights come from the checkpoint. No network access.

Deterministic: a fixed torch seed; random weights (ldm's zero-initialised output layers are re-filled with small
random values so the UNet output depends on the input, the timestep and the prompt). Generated files are never
committed (see .gitignore).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import sys
from pathlib import Path

CLIP_HIDDEN = 32
CLIP_LAYERS = 2
CLIP_HEADS = 2
CLIP_INTERMEDIATE = 64
VOCAB_SIZE = 49408

UNET = {
    "model_channels": 32,
    "attention_resolutions": [1, 2],
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "num_heads": 2,
    "transformer_depth": 1,
    "context_dim": CLIP_HIDDEN,
}
VAE = {"ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": []}


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> unicode table (same as open_clip / transformers)."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def find_bpe(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise SystemExit("open_clip not installed: pass --bpe PATH/TO/bpe_simple_vocab_16e6.txt.gz")
    return Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"


def write_tokenizer_files(clip_dir: Path, bpe_path: Path) -> None:
    """vocab.json + merges.txt identical in content to openai/clip-vit-large-patch14's."""
    with gzip.open(bpe_path) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    (clip_dir / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    with open(clip_dir / "merges.txt", "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        for m in merges:
            f.write(" ".join(m) + "\n")


def write_clip_dir(clip_dir: Path, bpe_path: Path, seed: int) -> None:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    clip_dir.mkdir(parents=True, exist_ok=True)
    write_tokenizer_files(clip_dir, bpe_path)
    tok = CLIPTokenizer(
        str(clip_dir / "vocab.json"),
        str(clip_dir / "merges.txt"),
        model_max_length=77,
        pad_token="<|endoftext|>",
    )
    tok.save_pretrained(str(clip_dir))
    ids = tok("a photo of a cat, masterpiece")["input_ids"]
    assert ids[0] == 49406, ids
    assert ids[-1] == 49407, ids

    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=CLIP_HIDDEN,
        intermediate_size=CLIP_INTERMEDIATE,
        projection_dim=CLIP_HIDDEN,
        num_hidden_layers=CLIP_LAYERS,
        num_attention_heads=CLIP_HEADS,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
    )
    torch.manual_seed(seed)
    model = CLIPTextModel(config).eval()
    # .bin, not .safetensors: see the module docstring (the WebUI would list it as a checkpoint).
    model.save_pretrained(str(clip_dir), safe_serialization=False)


def make_yaml(stock: dict, clip_dir: Path, parameterization: str | None) -> dict:
    cfg = copy.deepcopy(stock)
    params = cfg["model"]["params"]
    if parameterization is not None:
        params["parameterization"] = parameterization
    params["unet_config"]["params"].update(copy.deepcopy(UNET))
    params["first_stage_config"]["params"]["ddconfig"].update(copy.deepcopy(VAE))
    params["cond_stage_config"]["params"] = {"version": str(clip_dir.resolve())}
    return cfg


def import_ldm(webui: Path):
    for p in (webui / "repositories" / "stable-diffusion-stability-ai", webui):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    try:  # same shim as the WebUI's initialize_util.fix_pytorch_lightning
        import pytorch_lightning.utilities.distributed
    except ImportError:
        import pytorch_lightning

        sys.modules["pytorch_lightning.utilities.distributed"] = pytorch_lightning.utilities.rank_zero
    from ldm.util import instantiate_from_config

    return instantiate_from_config


def build_state_dict(cfg: dict, webui: Path, seed: int) -> dict:
    import torch
    from omegaconf import OmegaConf

    instantiate_from_config = import_ldm(webui)
    torch.manual_seed(seed)
    model = instantiate_from_config(OmegaConf.create(cfg).model).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _name, param in sorted(model.model.named_parameters()):
            if param.dim() > 1 and not param.any():  # ldm zero_module() outputs: make them do something
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    return {
        k: v.detach().to(torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
        for k, v in model.state_dict().items()
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument(
        "--webui", default=os.environ.get("WEBUI_DIR", "/work/webui"), help="WebUI root (for ldm and configs)"
    )
    ap.add_argument("--clip-dir", default=None, help="where to write the tiny CLIP dir (default OUT_DIR/tiny-clip)")
    ap.add_argument(
        "--bpe", default=None, help="bpe_simple_vocab_16e6.txt.gz (default: the one bundled with open_clip)"
    )
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)

    import yaml
    from safetensors.torch import save_file

    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    webui = Path(args.webui).resolve()
    clip_dir = Path(args.clip_dir).resolve() if args.clip_dir else out / "tiny-clip"

    write_clip_dir(clip_dir, find_bpe(args.bpe), args.seed)
    stock = yaml.safe_load((webui / "configs" / "v1-inference.yaml").read_text(encoding="utf-8"))

    state_dict = None
    for name, parameterization in (("tiny-vpred", "v"), ("tiny-eps", None)):
        cfg = make_yaml(stock, clip_dir, parameterization)
        with open(out / f"{name}.yaml", "w", encoding="utf-8") as f:
            f.write(f"# generated by tests/webui/tiny_models.py (seed {args.seed}); random weights, tests only\n")
            yaml.safe_dump(cfg, f, sort_keys=False)
        if state_dict is None:  # the architecture is the same for both, so are the weights
            state_dict = build_state_dict(cfg, webui, args.seed)
        save_file(state_dict, str(out / f"{name}.safetensors"), metadata={"tiny_models.name": name})
        print(f"wrote {out / name}.safetensors ({len(state_dict)} tensors) + {name}.yaml")
    print(f"tiny CLIP text encoder: {clip_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
