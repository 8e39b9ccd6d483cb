"""Generate full-size random-weight SD1.5 checkpoints for hosts that recognise models by tensor shapes (Forge, reForge).

Usage (any Python with torch and numpy, e.g. a host's venv; no network, no model code needed)::

    python tests/webui/full_models.py OUT_DIR [--seed 1234]
    python tests/webui/full_models.py --table        # print the key/shape table's counts and exit

Writes into OUT_DIR (created if missing):

- ``sd15-v.safetensors`` + ``sd15-v.yaml``  the state dict below, and a v1 inference YAML with
  ``parameterization: "v"`` (what makes Forge's loader sample it as v-prediction, ``backend/loader.py``);
- ``sd15-eps.safetensors``                  the same file (a hard link where the file system allows, else a copy)
  without a YAML: SD1.5 without a YAML is eps.

Forge and reForge pick the model class from the state dict's tensor shapes (``huggingface_guess``); a shrunken model
(``tiny_models.py``) is rejected with ``Failed to recognize model type!``. So this is the real SD1.5 architecture in
the original LDM key layout (what ``v1-5-pruned-emaonly.safetensors`` holds), described explicitly below:

- ``model.diffusion_model.*``: 686 UNet tensors (``UNetModel``: 320 channels, ``channel_mult`` 1, 2, 4, 4, 2 res
  blocks, attention at downsampling 1, 2, 4 with 8 heads, context 768, conv ``proj_in``/``proj_out``);
- ``first_stage_model.*``: 248 VAE tensors (``AutoencoderKL``: ch 128, ``ch_mult`` 1, 2, 4, 4, 2 res blocks, z 4,
  ``double_z``);
- ``cond_stage_model.transformer.text_model.*``: 197 CLIP ViT-L/14 text-encoder tensors (hidden 768, 12 layers,
  MLP 3072, vocab 49408, 77 positions; ``embeddings.position_ids`` as int64, as in the released checkpoint);
- 12 DDPM schedule buffers (``betas``, ``alphas_cumprod`` ...) computed as ldm's ``register_schedule`` does from the
  scaled-linear betas (``linear_start`` 0.00085, ``linear_end`` 0.012, 1000 steps).

1,066,235,307 parameters (1,143 tensors), 2.13 GB in fp16 (float tensors are fp16, as in released checkpoints).

Values: each tensor is drawn from its own ``torch.Generator`` seeded from (seed, key name), so the result does not
depend on the order of generation: weights ``normal / sqrt(fan_in)``, biases ``0.02 * normal``, norm weights
``1 + 0.02 * normal``, norm biases ``0.02 * normal``, the token and position embeddings ``0.02 * normal``. No tensor is
all-zero: the layers ldm initialises with zeros (the UNet's output conv, each res block's last conv, each transformer's
``proj_out``) get the same random init as the others, else the UNet's output, and with it v, would be identically 0.
Sampled at 64x64 this gives finite, non-constant (meaningless) images.

The file is written directly in the safetensors format, one tensor at a time, so the peak memory stays near one
tensor (the token embedding, 38 M values) instead of the whole 2 GB state dict. Same seed and torch version:
byte-identical files. Generated files are never committed (see .gitignore).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

# --- architecture (SD1.5, configs/v1-inference.yaml) ------------------------------------------------------------
UNET_CHANNELS = 320
UNET_CHANNEL_MULT = (1, 2, 4, 4)
UNET_RES_BLOCKS = 2
UNET_ATTENTION_DS = (4, 2, 1)
UNET_IN = 4
UNET_OUT = 4
TIME_EMBED = 4 * UNET_CHANNELS
CONTEXT_DIM = 768

VAE_CH = 128
VAE_CH_MULT = (1, 2, 4, 4)
VAE_RES_BLOCKS = 2
VAE_Z = 4
VAE_EMBED = 4
VAE_IMAGE_CHANNELS = 3

CLIP_HIDDEN = 768
CLIP_LAYERS = 12
CLIP_MLP = 3072
CLIP_VOCAB = 49408
CLIP_POSITIONS = 77

TIMESTEPS = 1000
LINEAR_START = 0.00085
LINEAR_END = 0.012

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
SCHEDULE_KEYS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
#: tensors per part in the released SD1.5 checkpoint (``v1-5-pruned-emaonly``)
EXPECTED_COUNTS = {"unet": 686, "vae": 248, "clip": 197, "schedule": 12}

# kinds: "w" weight (fan-in scaled), "b" bias, "nw"/"nb" norm weight/bias, "emb" embedding, "pos" position ids,
# "sched" schedule buffer
Row = tuple[str, tuple[int, ...], str]


def _linear(name: str, out: int, inp: int, bias: bool = True) -> list[Row]:
    rows: list[Row] = [(f"{name}.weight", (out, inp), "w")]
    return [*rows, (f"{name}.bias", (out,), "b")] if bias else rows


def _conv(name: str, out: int, inp: int, k: int) -> list[Row]:
    return [(f"{name}.weight", (out, inp, k, k), "w"), (f"{name}.bias", (out,), "b")]


def _norm(name: str, c: int) -> list[Row]:
    return [(f"{name}.weight", (c,), "nw"), (f"{name}.bias", (c,), "nb")]


def _unet_resblock(p: str, cin: int, cout: int) -> list[Row]:
    rows = [
        *_norm(p + "in_layers.0", cin),
        *_conv(p + "in_layers.2", cout, cin, 3),
        *_linear(p + "emb_layers.1", cout, TIME_EMBED),
        *_norm(p + "out_layers.0", cout),
        *_conv(p + "out_layers.3", cout, cout, 3),
    ]
    return rows + (_conv(p + "skip_connection", cout, cin, 1) if cin != cout else [])


def _unet_transformer(p: str, c: int) -> list[Row]:
    b = p + "transformer_blocks.0."
    return [
        *_norm(p + "norm", c),
        *_conv(p + "proj_in", c, c, 1),
        *_linear(b + "attn1.to_q", c, c, bias=False),
        *_linear(b + "attn1.to_k", c, c, bias=False),
        *_linear(b + "attn1.to_v", c, c, bias=False),
        *_linear(b + "attn1.to_out.0", c, c),
        *_linear(b + "ff.net.0.proj", 8 * c, c),  # GEGLU: inner 4c, projected to 2 x 4c
        *_linear(b + "ff.net.2", c, 4 * c),
        *_linear(b + "attn2.to_q", c, c, bias=False),
        *_linear(b + "attn2.to_k", c, CONTEXT_DIM, bias=False),
        *_linear(b + "attn2.to_v", c, CONTEXT_DIM, bias=False),
        *_linear(b + "attn2.to_out.0", c, c),
        *_norm(b + "norm1", c),
        *_norm(b + "norm2", c),
        *_norm(b + "norm3", c),
        *_conv(p + "proj_out", c, c, 1),
    ]


def unet_rows() -> list[Row]:
    """ldm ``openaimodel.UNetModel`` with SD1.5's parameters, in its construction order."""
    rows = [*_linear("time_embed.0", TIME_EMBED, UNET_CHANNELS), *_linear("time_embed.2", TIME_EMBED, TIME_EMBED)]
    rows += _conv("input_blocks.0.0", UNET_CHANNELS, UNET_IN, 3)
    chans = [UNET_CHANNELS]
    ch, ds, n = UNET_CHANNELS, 1, 1
    for level, mult in enumerate(UNET_CHANNEL_MULT):
        for _ in range(UNET_RES_BLOCKS):
            rows += _unet_resblock(f"input_blocks.{n}.0.", ch, mult * UNET_CHANNELS)
            ch = mult * UNET_CHANNELS
            if ds in UNET_ATTENTION_DS:
                rows += _unet_transformer(f"input_blocks.{n}.1.", ch)
            chans.append(ch)
            n += 1
        if level != len(UNET_CHANNEL_MULT) - 1:
            rows += _conv(f"input_blocks.{n}.0.op", ch, ch, 3)
            chans.append(ch)
            ds *= 2
            n += 1
    rows += _unet_resblock("middle_block.0.", ch, ch)
    rows += _unet_transformer("middle_block.1.", ch)
    rows += _unet_resblock("middle_block.2.", ch, ch)
    n = 0
    for level, mult in reversed(list(enumerate(UNET_CHANNEL_MULT))):
        for i in range(UNET_RES_BLOCKS + 1):
            cin = ch + chans.pop()
            ch = mult * UNET_CHANNELS
            rows += _unet_resblock(f"output_blocks.{n}.0.", cin, ch)
            sub = 1
            if ds in UNET_ATTENTION_DS:
                rows += _unet_transformer(f"output_blocks.{n}.1.", ch)
                sub = 2
            if level and i == UNET_RES_BLOCKS:
                rows += _conv(f"output_blocks.{n}.{sub}.conv", ch, ch, 3)
                ds //= 2
            n += 1
    rows += [*_norm("out.0", UNET_CHANNELS), *_conv("out.2", UNET_OUT, UNET_CHANNELS, 3)]
    return [(UNET_PREFIX + k, s, kind) for k, s, kind in rows]


def _vae_resblock(p: str, cin: int, cout: int) -> list[Row]:
    rows = [*_norm(p + "norm1", cin), *_conv(p + "conv1", cout, cin, 3)]
    rows += [*_norm(p + "norm2", cout), *_conv(p + "conv2", cout, cout, 3)]
    return rows + (_conv(p + "nin_shortcut", cout, cin, 1) if cin != cout else [])


def _vae_mid(p: str, c: int) -> list[Row]:
    attn = [*_norm(p + "attn_1.norm", c)]
    for name in ("q", "k", "v", "proj_out"):
        attn += _conv(f"{p}attn_1.{name}", c, c, 1)
    return [*_vae_resblock(p + "block_1.", c, c), *attn, *_vae_resblock(p + "block_2.", c, c)]


def vae_rows() -> list[Row]:
    """ldm ``AutoencoderKL`` (``Encoder`` / ``Decoder`` without attention at any resolution, as SD1.5's)."""
    last = len(VAE_CH_MULT) - 1
    rows = _conv("encoder.conv_in", VAE_CH, VAE_IMAGE_CHANNELS, 3)
    cin = VAE_CH
    for i, mult in enumerate(VAE_CH_MULT):
        cout = VAE_CH * mult
        for j in range(VAE_RES_BLOCKS):
            rows += _vae_resblock(f"encoder.down.{i}.block.{j}.", cin, cout)
            cin = cout
        if i != last:
            rows += _conv(f"encoder.down.{i}.downsample.conv", cin, cin, 3)
    rows += _vae_mid("encoder.mid.", cin)
    rows += [*_norm("encoder.norm_out", cin), *_conv("encoder.conv_out", 2 * VAE_Z, cin, 3)]
    c = VAE_CH * VAE_CH_MULT[-1]
    rows += _conv("decoder.conv_in", c, VAE_Z, 3)
    rows += _vae_mid("decoder.mid.", c)
    for i in reversed(range(len(VAE_CH_MULT))):
        cout = VAE_CH * VAE_CH_MULT[i]
        for j in range(VAE_RES_BLOCKS + 1):
            rows += _vae_resblock(f"decoder.up.{i}.block.{j}.", c, cout)
            c = cout
        if i != 0:
            rows += _conv(f"decoder.up.{i}.upsample.conv", c, c, 3)
    rows += [*_norm("decoder.norm_out", c), *_conv("decoder.conv_out", VAE_IMAGE_CHANNELS, c, 3)]
    rows += _conv("quant_conv", 2 * VAE_EMBED, 2 * VAE_Z, 1)
    rows += _conv("post_quant_conv", VAE_Z, VAE_EMBED, 1)
    return [(VAE_PREFIX + k, s, kind) for k, s, kind in rows]


def clip_rows() -> list[Row]:
    """transformers ``CLIPTextModel`` (ViT-L/14 text config) under ldm's ``FrozenCLIPEmbedder.transformer``."""
    rows: list[Row] = [
        ("embeddings.position_ids", (1, CLIP_POSITIONS), "pos"),
        ("embeddings.token_embedding.weight", (CLIP_VOCAB, CLIP_HIDDEN), "emb"),
        ("embeddings.position_embedding.weight", (CLIP_POSITIONS, CLIP_HIDDEN), "emb"),
    ]
    for i in range(CLIP_LAYERS):
        p = f"encoder.layers.{i}."
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            rows += _linear(f"{p}self_attn.{name}", CLIP_HIDDEN, CLIP_HIDDEN)
        rows += _norm(p + "layer_norm1", CLIP_HIDDEN)
        rows += _linear(p + "mlp.fc1", CLIP_MLP, CLIP_HIDDEN)
        rows += _linear(p + "mlp.fc2", CLIP_HIDDEN, CLIP_MLP)
        rows += _norm(p + "layer_norm2", CLIP_HIDDEN)
    rows += _norm("final_layer_norm", CLIP_HIDDEN)
    return [(CLIP_PREFIX + k, s, kind) for k, s, kind in rows]


def schedule_rows() -> list[Row]:
    return [(k, (TIMESTEPS,), "sched") for k in SCHEDULE_KEYS]


def table() -> dict[str, list[Row]]:
    """Every tensor of the checkpoint: part -> [(key, shape, kind)]."""
    return {"unet": unet_rows(), "vae": vae_rows(), "clip": clip_rows(), "schedule": schedule_rows()}


def parameter_count(rows: list[Row]) -> int:
    return sum(math.prod(shape) for key, shape, kind in rows if kind not in ("pos", "sched"))


def schedule(torch) -> dict:
    """ldm ``DDPM.register_schedule`` for the "linear" (scaled-linear) schedule, in float64."""
    betas = torch.linspace(LINEAR_START**0.5, LINEAR_END**0.5, TIMESTEPS, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, dim=0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)  # v_posterior 0
    return {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - ac).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
    }


def key_seed(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") & (2**63 - 1)


def make_tensor(torch, seed: int, key: str, shape: tuple[int, ...], kind: str, sched: dict):
    """One tensor of the checkpoint, deterministic from (seed, key)."""
    if kind == "pos":
        return torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
    if kind == "sched":
        return sched[key].to(torch.float16)
    gen = torch.Generator().manual_seed(key_seed(seed, key))
    t = torch.randn(shape, generator=gen, dtype=torch.float32)
    if kind == "w":
        t *= 1.0 / math.sqrt(math.prod(shape[1:]))
    elif kind == "nw":
        t = t.mul_(0.02).add_(1.0)
    else:  # "b", "nb", "emb"
        t *= 0.02
    return t.to(torch.float16)


SAFETENSORS_DTYPES = {"torch.float16": "F16", "torch.int64": "I64"}
ITEM_SIZE = {"F16": 2, "I64": 8}


def write_safetensors(path: Path, rows: list[Row], produce, metadata: dict[str, str]) -> None:
    """Write ``rows`` in the safetensors format (8-byte little-endian header length, JSON header padded with spaces
    to 8 bytes, then the data in header order), producing one tensor at a time with ``produce(row)``."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    ordered = sorted(rows, key=lambda r: r[0])
    for key, shape, kind in ordered:
        dtype = "I64" if kind == "pos" else "F16"
        size = math.prod(shape) * ITEM_SIZE[dtype]
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for row in ordered:
            t = produce(row).contiguous()
            entry = header[row[0]]
            if SAFETENSORS_DTYPES[str(t.dtype)] != entry["dtype"] or list(t.shape) != entry["shape"]:
                raise ValueError(f"{row}: produced {t.dtype} {list(t.shape)}")
            f.write(t.numpy().tobytes())
    os.replace(tmp, path)


V1_V_YAML = """\
# generated by tests/webui/full_models.py (seed {seed}); random weights, tests only.
# configs/v1-inference.yaml of the WebUI with one change: parameterization "v".
model:
  base_learning_rate: 1.0e-04
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    linear_start: 0.00085
    linear_end: 0.0120
    num_timesteps_cond: 1
    log_every_t: 200
    timesteps: 1000
    first_stage_key: "jpg"
    cond_stage_key: "txt"
    image_size: 64
    channels: 4
    cond_stage_trainable: false
    conditioning_key: crossattn
    monitor: val/loss_simple_ema
    scale_factor: 0.18215
    use_ema: False

    scheduler_config:
      target: ldm.lr_scheduler.LambdaLinearScheduler
      params:
        warm_up_steps: [ 10000 ]
        cycle_lengths: [ 10000000000000 ]
        f_start: [ 1.e-6 ]
        f_max: [ 1. ]
        f_min: [ 1. ]

    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: 32 # unused
        in_channels: 4
        out_channels: 4
        model_channels: 320
        attention_resolutions: [ 4, 2, 1 ]
        num_res_blocks: 2
        channel_mult: [ 1, 2, 4, 4 ]
        num_heads: 8
        use_spatial_transformer: True
        transformer_depth: 1
        context_dim: 768
        use_checkpoint: False
        legacy: False

    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        monitor: val/rec_loss
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 256
          in_channels: 3
          out_ch: 3
          ch: 128
          ch_mult: [ 1, 2, 4, 4 ]
          num_res_blocks: 2
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity

    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
"""


def generate(out: Path, seed: int) -> None:
    import torch

    torch.set_num_threads(1)  # a background job on a shared machine; randn is not the bottleneck
    parts = table()
    rows = [row for part in parts.values() for row in part]
    for name, want in EXPECTED_COUNTS.items():
        assert len(parts[name]) == want, (name, len(parts[name]), want)
    sched = schedule(torch)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    v_path = out / "sd15-v.safetensors"
    metadata = {"format": "pt", "full_models.seed": str(seed), "full_models.note": "random weights, tests only"}
    write_safetensors(v_path, rows, lambda r: make_tensor(torch, seed, r[0], r[1], r[2], sched), metadata)
    (out / "sd15-v.yaml").write_text(V1_V_YAML.format(seed=seed), encoding="utf-8")
    eps_path = out / "sd15-eps.safetensors"
    eps_path.unlink(missing_ok=True)
    try:
        os.link(v_path, eps_path)
        how = "hard link"
    except OSError:
        shutil.copyfile(v_path, eps_path)
        how = "copy"
    (out / "sd15-eps.yaml").unlink(missing_ok=True)
    print(
        f"wrote {v_path} ({len(rows)} tensors, {parameter_count(rows):,} parameters, "
        f"{v_path.stat().st_size / 1e9:.2f} GB) + sd15-v.yaml, and {eps_path.name} ({how}) "
        f"in {time.monotonic() - started:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", nargs="?")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--table", action="store_true", help="print the tensor counts per part and exit")
    args = ap.parse_args(argv)
    if args.table:
        parts = table()
        for name, rows in parts.items():
            print(f"{name}: {len(rows)} tensors, {parameter_count(rows):,} parameters")
        everything = [r for rows in parts.values() for r in rows]
        print(f"total: {len(everything)} tensors, {parameter_count(everything):,} parameters")
        return 0
    if not args.out_dir:
        ap.error("OUT_DIR is required")
    generate(Path(args.out_dir).resolve(), args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
