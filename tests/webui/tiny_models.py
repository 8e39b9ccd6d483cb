"""Generate tiny random-weight SD1.x, SD2 and SDXL checkpoints for the live WebUI test tier.

Usage (inside the WebUI's venv, so torch, transformers, open_clip, omegaconf and the ldm/sgm modules are importable)::

    WEBUI/venv/bin/python tests/webui/tiny_models.py OUT_DIR --webui WEBUI [--clip-dir DIR] [--seed 1234]

``--webui`` is the WebUI root (its ``configs/`` and ``repositories/``); it defaults to ``$WEBUI_DIR`` and is required
when that is unset. Writes into OUT_DIR (created if missing):

- ``tiny-clip/``              a tiny CLIP text encoder for ldm's / sgm's ``FrozenCLIPEmbedder`` (``config.json``,
                              ``pytorch_model.bin`` and the real CLIP BPE tokenizer ``vocab.json`` / ``merges.txt``,
                              derived from open_clip's bundled ``bpe_simple_vocab_16e6.txt.gz``). ``--clip-dir`` puts it
                              elsewhere. Its weights are stored as ``.bin`` on purpose: the WebUI lists every
                              ``*.safetensors`` / ``*.ckpt`` under ``--ckpt-dir`` (recursively) as a checkpoint.
- ``tiny-vpred.safetensors`` + ``tiny-vpred.yaml``   SD1, ``model.params.parameterization: "v"``
- ``tiny-eps.safetensors``   + ``tiny-eps.yaml``     SD1, no ``parameterization`` key (ldm default ``eps``), like the
                                                     stock ``configs/v1-inference.yaml``
- ``tiny-sd2-v.safetensors`` + ``tiny-sd2-v.yaml``   SD2 768-v style: ldm's ``v2-inference-v.yaml``
                                                     (``parameterization: "v"``, OpenCLIP text encoder)
- ``tiny-sdxl-v.safetensors`` + ``tiny-sdxl-v.yaml`` SDXL (sgm ``sd_xl_base.yaml``) with ``VScaling`` and a top-level
                                                     ``ztsnr: true`` (read by sd-webui-vpred only; the WebUI ignores it)
- ``tiny-sdxl-vpredkeys.safetensors`` + ``.yaml``    its twin, NoobAI-XL V-Pred style: the stock ``EpsScaling`` YAML,
                                                     but empty ``v_pred`` and ``ztsnr`` marker tensors in the state dict

SD1: both checkpoints hold the same tensors (one full LatentDiffusion state dict with the key names the WebUI expects:
``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.text_model.*``, plus the
``betas`` / ``alphas_cumprod`` ... buffers). Only the safetensors ``__metadata__`` differs (``tiny_models.name``), so
the two files have different sha256 hashes and the WebUI does not alias one to the other. The two SDXL checkpoints
likewise share every tensor (plus the two markers in the twin).

Both SD1 YAMLs are derived from the WebUI's stock ``configs/v1-inference.yaml`` (linear_start 0.00085, linear_end
0.012, 1000 timesteps, scale_factor 0.18215 unchanged) with a shrunken architecture:

- text encoder: CLIPTextModel, hidden 32, 2 layers, 2 heads, 77 positions, vocab 49408;
- UNet: model_channels 32, channel_mult [1, 2], 1 res block, cross-attention at every level, context_dim 32;
- VAE: ch 32, ch_mult [1, 1, 1, 1] (so the latent factor stays 8, as the WebUI assumes), z_channels 4, embed_dim 4.

SD2 (``repositories/stable-diffusion-stability-ai/configs/stable-diffusion/v2-inference-v.yaml``, schedule and
scale_factor unchanged): ldm's ``FrozenOpenCLIPEmbedder`` with open_clip's bundled ``ViT-S-32-alt`` architecture (the
smallest text tower open_clip 2.20.0 ships: width 256, 10 layers, 4 heads, vocab 49408; the stock ViT-H-14 is width
1024, 24 layers) and ``version: null`` (no pretrained weights, never a download); layer ``penultimate`` as stock; UNet
as SD1's but ``num_head_channels`` 16 and context_dim 256; VAE as SD1's.

SDXL (``repositories/generative-models/configs/inference/sd_xl_base.yaml``, discretization and scale_factor 0.13025
unchanged): conditioner with sgm's ``FrozenCLIPEmbedder`` on ``tiny-clip/`` (layer ``hidden``, ``layer_idx`` 1: the
penultimate of its 2 layers, as 11 is of the stock 12), ``FrozenOpenCLIPEmbedder2`` with ``ViT-S-32-alt`` (pooled
output 256 wide), and the three size/crop ``ConcatTimestepEmbedderND`` with ``outdim`` 32 (stock 256); UNet
model_channels 32, channel_mult [1, 2], 1 res block, transformer depth [1, 1], ``num_head_channels`` 16,
context_dim 32 + 256 = 288, adm_in_channels 256 + 3 x 2 x 32 = 448 (stock 2816 = 1280 + 3 x 2 x 256); VAE as SD1's.

GroupNorm(32) in ldm/sgm means every channel count must be a multiple of 32. The WebUI works in multiples of 8 pixels;
16x16 .. 72x72 were tried and work (64x64 is the size the live tier uses).

Each YAML that uses the tiny CLIP names its directory by absolute path (``cond_stage_config.params.version`` for SD1,
the first SDXL embedder's ``version``): the WebUI (started with ``--do-not-download-clip``, or because the checkpoint
contains the text encoder) builds ``CLIPTextModel`` from that directory's ``config.json`` and loads the tokenizer
from it with ``CLIPTokenizer.from_pretrained``; the text-encoder weights come from the checkpoint. The OpenCLIP
encoders use open_clip's own bundled tokenizer, as the WebUI does. No network access.

Deterministic: a fixed torch seed; random weights (ldm's and sgm's zero-initialised output layers are re-filled with
small random values so the UNet output depends on the input, the timestep and the prompt; the OpenCLIP text towers'
LayerNorms get random weights and biases, see :func:`build_state_dict`). Same seed and torch version: byte-identical
``.safetensors``. Generated files are never committed (see .gitignore).

The WebUI loads ``models/VAE-approx/vaeapprox-sdxl.pt`` for live previews of SDXL and would download it (offline:
``URLError``); requests for the SDXL checkpoints pass ``"live_previews_enable": false`` in ``override_settings``.
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

#: open_clip 2.20.0's smallest bundled text tower (``model_configs/ViT-S-32-alt.json``): text width 256, 10 layers,
#: 4 heads; its text projection (the SDXL pooled output) is ``embed_dim`` 256 wide. Checked against open_clip at run.
OPENCLIP_ARCH = "ViT-S-32-alt"
OPENCLIP_WIDTH = 256
OPENCLIP_EMBED_DIM = 256
#: sgm ``ConcatTimestepEmbedderND`` outdim for the size/crop conditioning (stock 256); each embeds 2 numbers.
SDXL_SIZE_EMBED = 32
SDXL_SIZE_EMBEDDERS = 3  # original_size_as_tuple, crop_coords_top_left, target_size_as_tuple

SD2_UNET = {
    "model_channels": 32,
    "attention_resolutions": [1, 2],
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "num_head_channels": 16,  # stock 64: with 32 channels that would be 0 heads
    "transformer_depth": 1,
    "context_dim": OPENCLIP_WIDTH,
}
SDXL_UNET = {
    "adm_in_channels": OPENCLIP_EMBED_DIM + SDXL_SIZE_EMBEDDERS * 2 * SDXL_SIZE_EMBED,
    "model_channels": 32,
    "attention_resolutions": [1, 2],
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "num_head_channels": 16,
    "transformer_depth": [1, 1],
    "context_dim": CLIP_HIDDEN + OPENCLIP_WIDTH,
}
SGM_SCALING = "sgm.modules.diffusionmodules.denoiser_scaling."


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


def make_sd2_yaml(stock: dict) -> dict:
    """ldm's ``v2-inference-v.yaml`` (``parameterization: "v"``, FrozenOpenCLIPEmbedder) with the tiny architecture."""
    cfg = copy.deepcopy(stock)
    params = cfg["model"]["params"]
    assert params["parameterization"] == "v", params.get("parameterization")
    params["unet_config"]["params"].update(copy.deepcopy(SD2_UNET))
    params["first_stage_config"]["params"]["ddconfig"].update(copy.deepcopy(VAE))
    cond = params["cond_stage_config"]
    assert cond["target"] == "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder", cond["target"]
    cond["params"].update({"arch": OPENCLIP_ARCH, "version": None})  # no pretrained weights: never a download
    return cfg


def make_sdxl_yaml(stock: dict, clip_dir: Path, scaling: str, ztsnr: bool | None = None) -> dict:
    """sgm's ``sd_xl_base.yaml`` with the tiny architecture and the given denoiser scaling class; ``ztsnr`` adds the
    top-level marker sd-webui-vpred reads (the WebUI builds the model from ``model`` only)."""
    cfg = copy.deepcopy(stock)
    params = cfg["model"]["params"]
    params["denoiser_config"]["params"]["scaling_config"]["target"] = SGM_SCALING + scaling
    params["network_config"]["params"].update(copy.deepcopy(SDXL_UNET))
    params["first_stage_config"]["params"]["ddconfig"].update(copy.deepcopy(VAE))
    clip_l, clip_g, *size_embedders = params["conditioner_config"]["params"]["emb_models"]
    assert clip_l["target"].endswith(".FrozenCLIPEmbedder"), clip_l["target"]
    clip_l["params"].update({"version": str(clip_dir.resolve()), "layer_idx": CLIP_LAYERS - 1})
    assert clip_g["target"].endswith(".FrozenOpenCLIPEmbedder2"), clip_g["target"]
    clip_g["params"].update({"arch": OPENCLIP_ARCH, "version": None})
    assert len(size_embedders) == SDXL_SIZE_EMBEDDERS, size_embedders
    for emb in size_embedders:
        assert emb["target"].endswith(".ConcatTimestepEmbedderND"), emb["target"]
        emb["params"]["outdim"] = SDXL_SIZE_EMBED
    return {"ztsnr": ztsnr, **cfg} if ztsnr is not None else cfg


def check_openclip_arch() -> None:
    """The bundled ``OPENCLIP_ARCH`` config has the widths the UNets above are sized for."""
    import open_clip

    cfg = open_clip.get_model_config(OPENCLIP_ARCH)
    if cfg is None:
        raise SystemExit(f"open_clip has no bundled {OPENCLIP_ARCH} config (open_clip 2.20.0 has)")
    text = cfg["text_cfg"]
    got = (text["width"], cfg["embed_dim"], text.get("vocab_size", VOCAB_SIZE), text.get("context_length", 77))
    want = (OPENCLIP_WIDTH, OPENCLIP_EMBED_DIM, VOCAB_SIZE, 77)
    if got != want:
        raise SystemExit(f"open_clip {OPENCLIP_ARCH}: (text width, embed_dim, vocab, context) {got}, expected {want}")


def import_ldm(webui: Path):
    repos = webui / "repositories"
    for p in (repos / "generative-models", repos / "stable-diffusion-stability-ai", webui):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    try:  # same shim as the WebUI's initialize_util.fix_pytorch_lightning
        import pytorch_lightning.utilities.distributed
    except ImportError:
        import pytorch_lightning

        sys.modules["pytorch_lightning.utilities.distributed"] = pytorch_lightning.utilities.rank_zero
    from ldm.util import instantiate_from_config

    return instantiate_from_config


def build_state_dict(cfg: dict, webui: Path, seed: int, layernorms: tuple[str, ...] = ()) -> dict:
    """Instantiate ``cfg.model`` with random weights; return its state dict (float32, contiguous).

    ``layernorms``: module-name prefixes whose LayerNorms get random weights and biases instead of the 1/0 they are
    created with. An SD2 text embedding ends in ``ln_final``: with weight 1 and bias 0 every token's features have
    mean 0, the empty prompt's embedding has a mean of exactly 0.0, and the WebUI's "Original" emphasis, which
    rescales by ``old_mean / new_mean``, turns it into NaN (trained weights never do that).
    """
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
        if layernorms:
            ln_gen = torch.Generator().manual_seed(seed + 2)
            for name, module in sorted(model.named_modules()):
                if isinstance(module, torch.nn.LayerNorm) and name.startswith(layernorms):
                    module.weight.copy_(1 + torch.randn(module.weight.shape, generator=ln_gen) * 0.1)
                    module.bias.copy_(torch.randn(module.bias.shape, generator=ln_gen) * 0.1)
    return {
        k: v.detach().to(torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
        for k, v in model.state_dict().items()
    }


def write_yaml(path: Path, cfg: dict, seed: int, *notes: str) -> None:
    import yaml

    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# generated by tests/webui/tiny_models.py (seed {seed}); random weights, tests only\n")
        for note in notes:
            f.write(f"# {note}\n")
        yaml.safe_dump(cfg, f, sort_keys=False)


def save(state_dict: dict, out: Path, name: str) -> None:
    from safetensors.torch import save_file

    save_file(state_dict, str(out / f"{name}.safetensors"), metadata={"tiny_models.name": name})
    print(f"wrote {out / name}.safetensors ({len(state_dict)} tensors) + {name}.yaml")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    webui_dir = os.environ.get("WEBUI_DIR")
    ap.add_argument(
        "--webui",
        default=webui_dir,
        required=not webui_dir,
        help="WebUI root, for its configs and repositories/ (default: $WEBUI_DIR)",
    )
    ap.add_argument("--clip-dir", default=None, help="where to write the tiny CLIP dir (default OUT_DIR/tiny-clip)")
    ap.add_argument(
        "--bpe", default=None, help="bpe_simple_vocab_16e6.txt.gz (default: the one bundled with open_clip)"
    )
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)

    import torch
    import yaml

    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    webui = Path(args.webui).resolve()
    clip_dir = Path(args.clip_dir).resolve() if args.clip_dir else out / "tiny-clip"

    write_clip_dir(clip_dir, find_bpe(args.bpe), args.seed)
    stock = yaml.safe_load((webui / "configs" / "v1-inference.yaml").read_text(encoding="utf-8"))

    state_dict = None
    for name, parameterization in (("tiny-vpred", "v"), ("tiny-eps", None)):
        cfg = make_yaml(stock, clip_dir, parameterization)
        write_yaml(out / f"{name}.yaml", cfg, args.seed)
        if state_dict is None:  # the architecture is the same for both, so are the weights
            state_dict = build_state_dict(cfg, webui, args.seed)
        save(state_dict, out, name)
    del state_dict

    check_openclip_arch()
    repos = webui / "repositories"
    sd2_stock = yaml.safe_load(
        (repos / "stable-diffusion-stability-ai" / "configs" / "stable-diffusion" / "v2-inference-v.yaml").read_text(
            encoding="utf-8"
        )
    )
    cfg = make_sd2_yaml(sd2_stock)
    write_yaml(out / "tiny-sd2-v.yaml", cfg, args.seed)
    save(build_state_dict(cfg, webui, args.seed, layernorms=("cond_stage_model.",)), out, "tiny-sd2-v")

    sdxl_stock = yaml.safe_load(
        (repos / "generative-models" / "configs" / "inference" / "sd_xl_base.yaml").read_text(encoding="utf-8")
    )
    cfg = make_sdxl_yaml(sdxl_stock, clip_dir, "VScaling", ztsnr=True)
    write_yaml(out / "tiny-sdxl-v.yaml", cfg, args.seed, "top-level ztsnr: read by sd-webui-vpred only")
    # the twin has the same architecture and weights
    state_dict = build_state_dict(cfg, webui, args.seed, layernorms=("conditioner.embedders.1.",))
    save(state_dict, out, "tiny-sdxl-v")
    write_yaml(out / "tiny-sdxl-vpredkeys.yaml", make_sdxl_yaml(sdxl_stock, clip_dir, "EpsScaling"), args.seed)
    # NoobAI-XL V-Pred style markers (A1111 PR #16567: ``state_dict['v_pred'] = torch.tensor([])``)
    save({**state_dict, "v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}, out, "tiny-sdxl-vpredkeys")
    print(f"tiny CLIP text encoder: {clip_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
