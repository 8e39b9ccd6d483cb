"""Checkpoint detection (lib_vpred.detect): one test per signal, precedence and conflicts, and hostile files.

Every file is built here in tmp_path: real safetensors files via ``safetensors.torch.save_file``, hand-made headers
from raw bytes, and YAMLs modelled on the stock LDM/sgm configs.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import sys

import pytest
import torch
from safetensors.torch import save_file

from lib_vpred import detect
from lib_vpred.detect import Detection, HeaderError, detect_checkpoint

# --- fixtures: YAMLs and state dicts ------------------------------------------------------------------------------

#: SD1 ``v1-inference.yaml`` plus ``parameterization: "v"``, as shipped beside fluffyrock checkpoints (peers.md §9).
SD1_VPRED_YAML = """\
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
    cond_stage_trainable: false   # Note: different from the one we trained before
    conditioning_key: crossattn
    monitor: val/loss_simple_ema
    scale_factor: 0.18215
    use_ema: False

    scheduler_config: # 10000 warmup steps
      target: ldm.lr_scheduler.LambdaLinearScheduler
      params:
        warm_up_steps: [ 10000 ]
        cycle_lengths: [ 10000000000000 ] # incredibly large number to prevent corner cases
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
        use_checkpoint: True
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
          ch_mult:
          - 1
          - 2
          - 4
          - 4
          num_res_blocks: 2
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity

    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
"""

SD1_EPS_YAML = SD1_VPRED_YAML.replace('    parameterization: "v"\n', "")

#: SD2 ``v2-inference-v.yaml`` (768-v).
SD2_V_YAML = """\
model:
  base_learning_rate: 1.0e-4
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
    use_ema: False # we set this to false because this is an inference only config

    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        use_checkpoint: True
        use_fp16: True
        image_size: 32 # unused
        in_channels: 4
        out_channels: 4
        model_channels: 320
        attention_resolutions: [ 4, 2, 1 ]
        num_res_blocks: 2
        channel_mult: [ 1, 2, 4, 4 ]
        num_head_channels: 64 # need to fix for flash-attn
        use_spatial_transformer: True
        use_linear_in_transformer: True
        transformer_depth: 1
        context_dim: 1024
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
          ch_mult: [1, 2, 4, 4]
          num_res_blocks: 2
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity

    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
      params:
        freeze: True
        layer: "penultimate"
"""

#: SDXL base as sgm configures it, with v-prediction scaling (A1111 ``dev`` ``configs/sd_xl_v.yaml`` style).
SDXL_V_YAML = """\
model:
  target: sgm.models.diffusion.DiffusionEngine
  params:
    scale_factor: 0.13025
    disable_first_stage_autocast: True

    denoiser_config:
      target: sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser
      params:
        num_idx: 1000

        weighting_config:
          target: sgm.modules.diffusionmodules.denoiser_weighting.VWeighting
        scaling_config:
          target: sgm.modules.diffusionmodules.denoiser_scaling.VScaling
        discretization_config:
          target: sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization

    network_config:
      target: sgm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        adm_in_channels: 2816
        num_classes: sequential
        use_checkpoint: True
        in_channels: 4
        out_channels: 4
        model_channels: 320
        attention_resolutions: [4, 2]
        num_res_blocks: 2
        channel_mult: [1, 2, 4]
        num_head_channels: 64
        use_linear_in_transformer: True
        transformer_depth: [1, 2, 10]
        context_dim: 2048
        spatial_transformer_attn_type: softmax-xformers

    conditioner_config:
      target: sgm.modules.GeneralConditioner
      params:
        emb_models:
          - is_trainable: False
            input_key: txt
            target: sgm.modules.encoders.modules.FrozenCLIPEmbedder
            params:
              layer: hidden
              layer_idx: 11
          - is_trainable: False
            input_key: txt
            target: sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2
            params:
              arch: ViT-bigG-14
              version: laion2b_s39b_b160k
              freeze: True
              layer: penultimate
              always_return_pooled: True
              legacy: False
"""
SDXL_EPS_YAML = SDXL_V_YAML.replace("denoiser_scaling.VScaling", "denoiser_scaling.EpsScaling").replace(
    "denoiser_weighting.VWeighting", "denoiser_weighting.EpsWeighting"
)

UNET_ATTN2 = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
SD1_KEYS = {
    "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(4),
    UNET_ATTN2: torch.zeros(2, 768),
    "first_stage_model.decoder.conv_in.bias": torch.zeros(4),
}
SD2_KEYS = {
    "cond_stage_model.model.ln_final.weight": torch.zeros(4),
    UNET_ATTN2: torch.zeros(2, 1024),
}
SDXL_KEYS = {
    "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.zeros(4),
    "conditioner.embedders.1.model.ln_final.weight": torch.zeros(4),
    "model.diffusion_model.label_emb.0.0.weight": torch.zeros(2, 4),
}
MARK = torch.tensor([])  # what NoobAI-XL and A1111 PR #16567 store under 'v_pred' / 'ztsnr'


def write_st(path, tensors, metadata=None):
    """A real safetensors file (tensors are cloned: save_file refuses shared storage)."""
    save_file({k: v.clone() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def write_raw(path, header: bytes, *, length: int | None = None, tail: bytes = b""):
    """A hand-made file: 8-byte little-endian length (``len(header)`` unless given), the header bytes, a tail."""
    n = len(header) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + header + tail)
    return path


def write_header(path, header: dict, data_len: int = 0):
    raw = json.dumps(header).encode()
    return write_raw(path, raw, tail=b"\0" * data_len)


def assert_soft_failure(d: Detection, fragment: str):
    """A hostile input gave a Detection (never an exception) that explains itself."""
    assert isinstance(d, Detection)
    assert d.prediction is None
    assert any(fragment in r for r in d.reasons), d.reasons
    assert any(fragment in w for w in d.warnings), d.warnings


# --- 1. YAML --------------------------------------------------------------------------------------------------------


def test_yaml_sd1_vpred_beside_checkpoint(tmp_path):
    ckpt = write_st(tmp_path / "fluffy.safetensors", SD1_KEYS)
    (tmp_path / "fluffy.yaml").write_text(SD1_VPRED_YAML)
    d = detect_checkpoint(ckpt)
    assert (d.prediction, d.prediction_source) == ("v", "yaml")
    assert d.reasons[0] == "YAML fluffy.yaml: model.params.parameterization is 'v'"
    assert (d.family, d.family_source) == ("SD1", "yaml")
    assert (d.ztsnr, d.ztsnr_source) == (None, None)
    assert "no ZTSNR evidence" in d.reasons
    assert d.yaml_path == str(tmp_path / "fluffy.yaml")
    assert d.warnings == ()
    assert d.summary() == "SD1 v-pred, ZTSNR unknown (YAML parameterization v)"


def test_yaml_ldm_without_parameterization_is_eps():
    d = detect.detect_from_yaml_text(SD1_EPS_YAML, "v1-inference.yaml")
    assert (d.prediction, d.prediction_source, d.family) == ("eps", "yaml", "SD1")
    assert d.reasons[0] == "YAML v1-inference.yaml: model.params.parameterization absent: LDM default 'eps'"


def test_yaml_ldm_explicit_eps():
    text = SD1_VPRED_YAML.replace('parameterization: "v"', "parameterization: eps")
    assert detect.detect_from_yaml_text(text, "x.yaml").prediction == "eps"


def test_yaml_sd2_768_v():
    d = detect.detect_from_yaml_text(SD2_V_YAML, "v2-inference-v.yaml")
    assert (d.prediction, d.family) == ("v", "SD2")
    assert "YAML v2-inference-v.yaml: unet_config context_dim 1024: SD2" in d.reasons


def test_yaml_family_from_text_encoder_when_no_context_dim():
    text = SD2_V_YAML.replace("        context_dim: 1024\n", "")
    d = detect.detect_from_yaml_text(text, "x.yaml")
    assert d.family == "SD2"
    assert "YAML x.yaml: cond_stage_config FrozenOpenCLIPEmbedder: SD2" in d.reasons


@pytest.mark.parametrize(("text", "expected"), [(SDXL_V_YAML, "v"), (SDXL_EPS_YAML, "eps")])
def test_yaml_sgm_scaling_config(text, expected):
    d = detect.detect_from_yaml_text(text, "sdxl.yaml")
    assert (d.prediction, d.prediction_source, d.family) == (expected, "yaml", "SDXL")
    cls = "VScaling" if expected == "v" else "EpsScaling"
    assert d.reasons[0] == f"YAML sdxl.yaml: model.params.denoiser_config.params.scaling_config.target is {cls}"


@pytest.mark.parametrize("value", [True, False])
def test_yaml_top_level_ztsnr_marker(value):
    d = detect.detect_from_yaml_text(f"ztsnr: {str(value).lower()}\n" + SD1_VPRED_YAML, "z.yaml")
    assert (d.ztsnr, d.ztsnr_source) == (value, "yaml")
    assert f"YAML z.yaml: top-level ztsnr is {str(value).lower()}" in d.reasons


def _with_betas(betas):
    return SD1_VPRED_YAML.replace("    linear_start", f"    given_betas: {json.dumps(betas)}\n    linear_start")


def test_yaml_given_betas_decide_ztsnr():
    stock = [((0.00085**0.5) + i * ((0.012**0.5) - (0.00085**0.5)) / 999) ** 2 for i in range(1000)]
    d = detect.detect_from_yaml_text(_with_betas(stock), "b.yaml")
    assert (d.ztsnr, d.ztsnr_source) == (False, "yaml")
    # stock SD: sqrt(alpha_bar_T) = 0.068265 (paper Table 1), alpha_bar_T = 4.66e-3
    assert "YAML b.yaml: model.params.given_betas: terminal alpha_bar 0.00466 (non-zero terminal SNR)" in d.reasons
    d = detect.detect_from_yaml_text(_with_betas([*stock[:-1], 1.0]), "b.yaml")  # last beta 1: alpha_bar_T = 0
    assert (d.ztsnr, d.ztsnr_source) == (True, "yaml")


def test_explicit_yaml_path_overrides_sibling(tmp_path):
    ckpt = write_st(tmp_path / "m.safetensors", SD1_KEYS)
    (tmp_path / "m.yaml").write_text(SD1_EPS_YAML)
    other = tmp_path / "configs" / "vpred.yaml"
    other.parent.mkdir()
    other.write_text(SD1_VPRED_YAML)
    assert detect_checkpoint(ckpt).prediction == "eps"
    d = detect_checkpoint(ckpt, yaml_path=other)
    assert (d.prediction, d.yaml_path) == ("v", str(other))


def test_explicit_yaml_path_missing(tmp_path):
    ckpt = write_st(tmp_path / "m.safetensors", SD1_KEYS)
    d = detect_checkpoint(ckpt, yaml_path=tmp_path / "nope.yaml")
    assert d.prediction is None
    assert d.family == "SD1"
    assert any("nope.yaml not found" in w for w in d.warnings)


def test_yaml_beside_uses_same_base_name():
    assert detect.yaml_beside("/m/a.b.safetensors") == "/m/a.b.yaml"
    assert detect.yaml_beside("/m/model.ckpt") == "/m/model.yaml"


# --- 2. safetensors keys --------------------------------------------------------------------------------------------


def test_keys_v_pred_and_ztsnr_noobai_style(tmp_path):
    ckpt = write_st(tmp_path / "noob.safetensors", {**SDXL_KEYS, "v_pred": MARK, "ztsnr": MARK})
    d = detect_checkpoint(ckpt)
    assert (d.prediction, d.prediction_source) == ("v", "key")
    assert (d.ztsnr, d.ztsnr_source) == (True, "key")
    assert (d.family, d.family_source) == ("SDXL", "key")
    assert "safetensors key 'v_pred' present" in d.reasons
    assert "safetensors key 'ztsnr' present" in d.reasons
    assert d.summary() == "SDXL v-pred + ZTSNR (key v_pred; key ztsnr)"
    assert d.sources == {"prediction": "key", "ztsnr": "key", "family": "key"}
    assert d.warnings == ()


def test_keys_v_pred_without_ztsnr_leaves_ztsnr_unknown(tmp_path):
    d = detect_checkpoint(write_st(tmp_path / "a.safetensors", {**SDXL_KEYS, "v_pred": MARK}))
    assert (d.prediction, d.ztsnr) == ("v", None)
    assert "no ZTSNR evidence" in d.reasons


def test_keys_edm_vpred_cosxl(tmp_path):
    tensors = {**SDXL_KEYS, "edm_vpred.sigma_max": torch.tensor([120.0]), "edm_vpred.sigma_min": torch.tensor([0.002])}
    d = detect_checkpoint(write_st(tmp_path / "cosxl.safetensors", tensors))
    assert (d.prediction, d.edm, d.ztsnr, d.ztsnr_source) == ("v", True, None, None)
    assert any(r.startswith("ZTSNR not applicable") for r in d.reasons)
    assert "no ZTSNR evidence" not in d.reasons
    assert d.summary() == "SDXL v-pred EDM, ZTSNR n/a (key edm_vpred.sigma_max)"


def test_keys_edm_with_ztsnr_key_ignores_ztsnr_with_warning(tmp_path):
    tensors = {**SDXL_KEYS, "edm_vpred.sigma_max": torch.tensor([120.0]), "ztsnr": MARK}
    d = detect_checkpoint(write_st(tmp_path / "odd.safetensors", tensors))
    assert (d.edm, d.ztsnr) == (True, None)
    assert any("ZTSNR evidence ignored for an EDM checkpoint" in w for w in d.warnings)


def test_keys_prefixed_marker_is_accepted_with_note(tmp_path):
    d = detect_checkpoint(write_st(tmp_path / "u.safetensors", {**SDXL_KEYS, "model.diffusion_model.v_pred": MARK}))
    assert d.prediction == "v"
    assert any("is prefixed" in r for r in d.reasons)


def test_keys_playground_edm_is_not_vpred(tmp_path):
    tensors = {**SDXL_KEYS, "edm_mean": torch.zeros(4), "edm_std": torch.ones(4)}
    d = detect_checkpoint(write_st(tmp_path / "pg.safetensors", tensors))
    assert (d.prediction, d.edm) == (None, False)
    assert any("Playground" in w for w in d.warnings)


@pytest.mark.parametrize(
    ("tensors", "family"),
    [
        (SD1_KEYS, "SD1"),
        (SD2_KEYS, "SD2"),
        (SDXL_KEYS, "SDXL"),
        ({"conditioner.embedders.0.model.ln_final.weight": torch.zeros(4)}, "SDXL"),  # refiner
        # no probe key: found by the prefix scan
        ({"conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(2)}, "SDXL"),
        ({"conditioner.embedders.0.model.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(2)}, "SDXL"),
        ({"cond_stage_model.model.token_embedding.weight": torch.zeros(2)}, "SD2"),
        ({"cond_stage_model.transformer.embeddings.token_embedding.weight": torch.zeros(2)}, "SD1"),
        ({UNET_ATTN2: torch.zeros(2, 768)}, "SD1"),  # UNet only, LDM prefix
        ({UNET_ATTN2: torch.zeros(2, 1024)}, "SD2"),
        ({"input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight": torch.zeros(2, 2048)}, "SDXL"),  # no prefix
        ({"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": torch.zeros(2, 768)}, "SD1"),
        ({"some.other.weight": torch.zeros(2)}, "unknown"),
    ],
)
def test_family_from_keys(tmp_path, tensors, family):
    d = detect_checkpoint(write_st(tmp_path / "f.safetensors", tensors))
    assert d.family == family
    assert d.family_source == (None if family == "unknown" else "key")


def test_lora_file_is_flagged(tmp_path):
    d = detect_checkpoint(write_st(tmp_path / "l.safetensors", {"lora_unet_down_blocks_0.lora_down.weight": MARK}))
    assert any("LoRA" in w for w in d.warnings)


# --- 3. metadata ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"), [("v", "v"), ("v_prediction", "v"), ("epsilon", "eps"), ("eps", "eps"), (" V ", "v")]
)
def test_metadata_modelspec_prediction_type(tmp_path, value, expected):
    d = detect_checkpoint(write_st(tmp_path / "m.safetensors", SDXL_KEYS, {"modelspec.prediction_type": value}))
    assert (d.prediction, d.prediction_source) == (expected, "metadata")
    assert d.reasons[0] == f"metadata modelspec.prediction_type = {value!r}"


def test_metadata_unknown_prediction_type_is_reported(tmp_path):
    d = detect_checkpoint(write_st(tmp_path / "m.safetensors", SDXL_KEYS, {"modelspec.prediction_type": "flow"}))
    assert d.prediction is None
    assert any("neither v nor epsilon" in w for w in d.warnings)


@pytest.mark.parametrize(("value", "expected"), [("True", True), ("False", False), ("true", True), ("None", None)])
def test_metadata_kohya_zero_terminal_snr(tmp_path, value, expected):
    d = detect_checkpoint(write_st(tmp_path / "k.safetensors", SD1_KEYS, {"ss_zero_terminal_snr": value}))
    assert d.ztsnr is expected
    assert d.ztsnr_source == (None if expected is None else "metadata")


@pytest.mark.parametrize(
    ("meta", "prediction", "family"),
    [
        ({"ss_base_model_version": "sd_v1_v"}, "v", "SD1"),
        ({"ss_base_model_version": "sd_v2"}, "eps", "SD2"),
        ({"ss_base_model_version": "sdxl_base_v1-0"}, None, "SDXL"),
        ({"ss_v2": "True"}, None, "SD2"),  # ss_v2 means SD2, not v-prediction
        ({"ss_v2": "False"}, None, "unknown"),
        ({"ss_v_parameterization": "true"}, "v", "unknown"),
        ({"modelspec.architecture": "stable-diffusion-v2-768-v"}, "v", "SD2"),
        ({"modelspec.architecture": "stable-diffusion-v2-512"}, "eps", "SD2"),
        ({"modelspec.architecture": "stable-diffusion-xl-v1-base"}, None, "SDXL"),
        ({"modelspec.architecture": "stable-diffusion-v1"}, None, "SD1"),
    ],
)
def test_metadata_kohya_and_modelspec_keys(tmp_path, meta, prediction, family):
    d = detect_checkpoint(write_st(tmp_path / "k.safetensors", {"x": torch.zeros(1)}, meta))
    assert (d.prediction, d.family) == (prediction, family)
    if prediction:
        assert d.prediction_source == "metadata"


def test_metadata_adapter_architecture_is_flagged(tmp_path):
    meta = {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}
    d = detect_checkpoint(write_st(tmp_path / "k.safetensors", {"x": torch.zeros(1)}, meta))
    assert d.family == "SDXL"
    assert any("adapter (lora)" in w for w in d.warnings)


# --- 4. file name ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "prediction", "ztsnr"),
    [
        ("fluffyrock-1088-megares-terminal-snr-vpred-e132.safetensors", "v", True),
        ("fluffyrock-1088-minsnr-zsnr-vpred-ema.safetensors", "v", True),
        ("noobaiXLNAIXL_vPred10Version.safetensors", "v", None),
        ("model_v-prediction.safetensors", "v", None),
        ("model_v_pred_zero-terminal-snr.safetensors", "v", True),
        ("model-ztsnr.ckpt", None, True),
        ("model-zerosnr.safetensors", None, True),
        ("model-minsnr.safetensors", None, None),
        ("vpredator.safetensors", None, None),
        ("plain.safetensors", None, None),
    ],
)
def test_filename_hints(name, prediction, ztsnr):
    d = detect.detect_from_filename(name)
    assert (d.prediction, d.ztsnr) == (prediction, ztsnr)
    if prediction:
        assert d.prediction_source == "filename"
        assert any(r.startswith("filename contains") for r in d.reasons)


def test_filename_ignores_directories():
    assert detect.detect_from_filename("/models/vpred-ztsnr/plain.safetensors").prediction is None


def test_filename_only_when_nothing_stronger(tmp_path):
    ckpt = write_st(tmp_path / "thing-vpred.safetensors", SDXL_KEYS)
    assert detect_checkpoint(ckpt).prediction_source == "filename"
    ckpt = write_st(tmp_path / "other-vpred.safetensors", SDXL_KEYS, {"modelspec.prediction_type": "epsilon"})
    d = detect_checkpoint(ckpt)
    assert (d.prediction, d.prediction_source) == ("eps", "metadata")
    assert any("filename contains 'vpred'" in w for w in d.warnings)


# --- precedence and conflicts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "yaml_text", "yaml_says"),
    [
        ({**SDXL_KEYS, "v_pred": MARK, "ztsnr": MARK}, SDXL_EPS_YAML, "EpsScaling"),  # NoobAI-XL + a stock SDXL YAML
        ({**SD1_KEYS, "v_pred": MARK}, SD1_EPS_YAML, "parameterization absent"),
    ],
)
def test_v_pred_key_beats_a_yaml_that_keeps_the_default_eps_with_warning(tmp_path, keys, yaml_text, yaml_says):
    """A YAML's eps is only the config default (the WebUI's stock configs say the same without a YAML): the key's v
    wins, as it does without a YAML; the conflict is reported."""
    ckpt = write_st(tmp_path / "c.safetensors", keys)
    (tmp_path / "c.yaml").write_text(yaml_text)
    d = detect_checkpoint(ckpt)
    assert (d.prediction, d.prediction_source) == ("v", "key")
    assert d.reasons[0] == "safetensors key 'v_pred' present"
    (w,) = [w for w in d.warnings if w.startswith("conflicting prediction")]
    assert yaml_says in w
    assert "the YAML's eps is only the config default (the WebUI alone would sample eps)" in w
    if "ztsnr" in keys:
        assert (d.ztsnr, d.ztsnr_source) == (True, "key")
        assert d.summary() == "SDXL v-pred + ZTSNR (key v_pred; key ztsnr)"


def test_yaml_eps_still_beats_metadata_and_file_name_v(tmp_path):
    ckpt = write_st(tmp_path / "x-vpred.safetensors", SDXL_KEYS, {"modelspec.prediction_type": "v"})
    (tmp_path / "x-vpred.yaml").write_text(SDXL_EPS_YAML)
    d = detect_checkpoint(ckpt)
    assert (d.prediction, d.prediction_source) == ("eps", "yaml")
    assert any("WebUI v1.10.1 samples it as the YAML says" in w for w in d.warnings)


def test_yaml_v_beats_everything(tmp_path):
    ckpt = write_st(tmp_path / "c.safetensors", {**SDXL_KEYS, "v_pred": MARK}, {"modelspec.prediction_type": "eps"})
    (tmp_path / "c.yaml").write_text(SDXL_V_YAML)
    d = detect_checkpoint(ckpt)
    assert (d.prediction, d.prediction_source) == ("v", "yaml")
    assert "safetensors key 'v_pred' present (agrees)" in d.reasons


def test_key_beats_metadata_with_warning(tmp_path):
    ckpt = write_st(
        tmp_path / "c.safetensors", {**SDXL_KEYS, "v_pred": MARK}, {"modelspec.prediction_type": "epsilon"}
    )
    d = detect_checkpoint(ckpt)
    assert (d.prediction, d.prediction_source) == ("v", "key")
    assert any("metadata modelspec.prediction_type = 'epsilon'" in w for w in d.warnings)


def test_ztsnr_precedence_yaml_over_key_over_metadata(tmp_path):
    ckpt = write_st(tmp_path / "z.safetensors", {**SD1_KEYS, "ztsnr": MARK}, {"ss_zero_terminal_snr": "False"})
    d = detect_checkpoint(ckpt)
    assert (d.ztsnr, d.ztsnr_source) == (True, "key")
    assert any("conflicting ztsnr" in w and "ss_zero_terminal_snr" in w for w in d.warnings)
    (tmp_path / "z.yaml").write_text("ztsnr: false\n" + SD1_VPRED_YAML)
    d = detect_checkpoint(ckpt)
    assert (d.ztsnr, d.ztsnr_source) == (False, "yaml")


def test_family_conflict_yaml_vs_keys(tmp_path):
    ckpt = write_st(tmp_path / "x.safetensors", SDXL_KEYS)
    (tmp_path / "x.yaml").write_text(SD1_VPRED_YAML)
    d = detect_checkpoint(ckpt)
    assert d.family == "SD1"
    assert any("conflicting family" in w and "may not fit this checkpoint" in w for w in d.warnings)


def test_agreeing_evidence_is_supporting_not_a_warning(tmp_path):
    meta = {"modelspec.prediction_type": "v", "modelspec.architecture": "stable-diffusion-xl-v1-base"}
    ckpt = write_st(tmp_path / "noob-vpred.safetensors", {**SDXL_KEYS, "v_pred": MARK}, meta)
    d = detect_checkpoint(ckpt)
    assert d.warnings == ()
    assert "metadata modelspec.prediction_type = 'v' (agrees)" in d.reasons
    assert "filename contains 'vpred' (agrees)" in d.reasons


def test_merge_with_webui_model_reports_what_the_webui_samples(tmp_path):
    file_det = detect_checkpoint(write_st(tmp_path / "n.safetensors", {**SDXL_KEYS, "v_pred": MARK}))
    d = detect.merge(file_det, detect.detect_from_webui_model("eps", is_sdxl=True))
    assert (d.prediction, d.prediction_source, d.family) == ("v", "key", "SDXL")
    assert any("WebUI model parameterization is 'eps'" in w for w in d.warnings)


def test_webui_model_decides_when_the_file_says_nothing(tmp_path):
    file_det = detect_checkpoint(write_st(tmp_path / "sd2.safetensors", SD2_KEYS))
    d = detect.merge(file_det, detect.detect_from_webui_model("v", is_sd2=True, used_config="/c/v2-inference-v.yaml"))
    assert (d.prediction, d.prediction_source, d.family, d.family_source) == ("v", "webui", "SD2", "key")
    assert "WebUI model parameterization is 'v' (config v2-inference-v.yaml)" in d.reasons


def test_merge_is_order_independent_across_sources(tmp_path):
    a = detect.detect_from_filename("x-vpred.safetensors")
    b = detect.detect_from_yaml_text(SD1_EPS_YAML, "x.yaml")
    assert detect.merge(a, b).prediction == detect.merge(b, a).prediction == "eps"


def test_to_dict_is_json(tmp_path):
    d = detect_checkpoint(write_st(tmp_path / "n.safetensors", {**SDXL_KEYS, "v_pred": MARK, "ztsnr": MARK}))
    out = json.loads(json.dumps(d.to_dict()))
    assert (out["prediction"], out["ztsnr"], out["sources"]["family"]) == ("v", True, "key")
    assert out["summary"] == d.summary()


# --- reading the header --------------------------------------------------------------------------------------------


def test_read_header_roundtrip(tmp_path):
    path = write_st(tmp_path / "r.safetensors", {"v_pred": MARK, "w": torch.zeros(3, 2)}, {"a": "b"})
    header = detect.read_safetensors_header(path)
    assert header["__metadata__"] == {"a": "b"}
    assert (header["w"]["shape"], header["w"]["dtype"]) == ([3, 2], "F32")
    assert header["v_pred"]["shape"] == [0]


def test_read_header_reads_only_the_header(tmp_path, monkeypatch):
    path = write_st(tmp_path / "big.safetensors", {"w": torch.zeros(256, 1024), "v_pred": MARK})
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    real_read, seen = os.read, []

    def counting_read(fd, size):
        data = real_read(fd, size)
        seen.append(len(data))
        return data

    monkeypatch.setattr(os, "read", counting_read)
    detect.read_safetensors_header(path)
    assert sum(seen) == 8 + n < path.stat().st_size


def test_detection_never_writes(tmp_path):
    ckpt = write_st(tmp_path / "n-vpred.safetensors", {**SDXL_KEYS, "v_pred": MARK})
    yml = tmp_path / "n-vpred.yaml"
    yml.write_text(SDXL_V_YAML)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_size) for p in tmp_path.iterdir()}
    for _ in range(3):
        detect_checkpoint(ckpt)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_size) for p in tmp_path.iterdir()}
    assert after == before


def test_detection_is_a_pure_function_of_contents(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = write_st(tmp_path / "a" / "m.safetensors", {**SDXL_KEYS, "v_pred": MARK})
    two = write_st(tmp_path / "b" / "m.safetensors", {**SDXL_KEYS, "v_pred": MARK})
    assert detect_checkpoint(one) == detect_checkpoint(two) == detect_checkpoint(one)
    assert hash(detect_checkpoint(one)) == hash(detect_checkpoint(two))


# --- hostile files: always a Detection with reasons, never an exception ------------------------------------------


def test_missing_file(tmp_path):
    assert_soft_failure(detect_checkpoint(tmp_path / "missing.safetensors"), "missing.safetensors not found")


def test_directory(tmp_path):
    (tmp_path / "dir.safetensors").mkdir()
    assert_soft_failure(detect_checkpoint(tmp_path / "dir.safetensors"), "is a directory")


@pytest.mark.parametrize(("content", "fragment"), [(b"", "0 bytes"), (b"\x05\x00\x00", "3 bytes")])
def test_empty_and_short_files(tmp_path, content, fragment):
    path = tmp_path / "short.safetensors"
    path.write_bytes(content)
    assert_soft_failure(detect_checkpoint(path), fragment)


def test_header_length_past_end_of_file(tmp_path):
    path = write_raw(tmp_path / "t.safetensors", b'{"v_pred": {}}', length=10_000)
    assert_soft_failure(detect_checkpoint(path), "runs past the end")


def test_header_length_absurd(tmp_path):
    path = write_raw(tmp_path / "t.safetensors", b"{}", length=2**63 + 5)
    assert_soft_failure(detect_checkpoint(path), "exceeds the 100000000-byte limit")


def test_header_length_over_max_header_bytes(tmp_path):
    path = write_st(tmp_path / "m.safetensors", {**SDXL_KEYS, "v_pred": MARK})
    assert detect_checkpoint(path).prediction == "v"
    assert_soft_failure(detect_checkpoint(path, max_header_bytes=64), "exceeds the 64-byte limit")


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"v_pred": \xff\xfe}', "not UTF-8"),
        (b'{"v_pred": {"dtype": ', "not valid JSON"),
        (b"not json at all", "not valid JSON"),
        (b'["v_pred", "ztsnr"]', "a JSON list, not an object"),
        (b'"v_pred"', "a JSON str, not an object"),
        (b"[" * 200_000 + b"]" * 200_000, "not valid JSON"),  # nesting deep enough to overflow a recursive parser
    ],
)
def test_garbage_headers(tmp_path, raw, fragment):
    path = write_raw(tmp_path / "g.safetensors", raw)
    assert_soft_failure(detect_checkpoint(path), fragment)
    with pytest.raises(HeaderError):
        detect.read_safetensors_header(path)


def test_metadata_not_a_dict(tmp_path):
    path = write_header(tmp_path / "m.safetensors", {"__metadata__": ["modelspec.prediction_type", "v"]})
    d = detect_checkpoint(path)
    assert d.prediction is None
    assert any("__metadata__ is a JSON list" in w for w in d.warnings)


def test_metadata_non_string_values_are_ignored_not_fatal(tmp_path):
    meta = {"ss_zero_terminal_snr": True, "modelspec.prediction_type": "v", "n": 3, "o": {"x": 1}}
    d = detect_checkpoint(write_header(tmp_path / "m.safetensors", {"__metadata__": meta}))
    assert (d.prediction, d.ztsnr) == ("v", None)  # the string value is used; the JSON bool is not
    assert any("3 safetensors __metadata__ value(s) are not strings" in w for w in d.warnings)


def test_odd_tensor_entries_are_tolerated(tmp_path):
    header = {UNET_ATTN2: {"shape": "768"}, "x.transformer_blocks.0.attn2.to_k.weight": [1, 2], "v_pred": None}
    d = detect_checkpoint(write_header(tmp_path / "o.safetensors", header))
    assert (d.prediction, d.family) == ("v", "unknown")


def test_overlapping_offsets_and_short_data_do_not_stop_detection(tmp_path):
    """Detection reads names and metadata, never tensor data, so bad offsets do not matter to it; the safetensors
    library's reader (which a faster path could use) rejects such a file, which is why detection keeps its own."""
    header = {
        "v_pred": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},
        "conditioner.embedders.1.model.ln_final.weight": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]},
        "overlaps": {"dtype": "F16", "shape": [4], "data_offsets": [4, 12]},  # overlaps the previous tensor
        "__metadata__": {"modelspec.architecture": "stable-diffusion-xl-v1-base"},
    }
    path = write_header(tmp_path / "overlap.safetensors", header, data_len=8)  # and the data ends at byte 8, not 12
    d = detect_checkpoint(path)
    assert (d.prediction, d.family, d.prediction_source) == ("v", "SDXL", "key")
    assert d.warnings == ()
    from safetensors import SafetensorError, safe_open

    with pytest.raises(SafetensorError, match="invalid offset"), safe_open(str(path), "pt") as f:
        f.keys()


def test_huge_number_of_keys(tmp_path):
    header = {
        f"model.diffusion_model.block.{i}.weight": {"dtype": "F16", "shape": [1], "data_offsets": [0, 0]}
        for i in range(200_000)
    }
    header["conditioner.embedders.1.model.ln_final.weight"] = {"dtype": "F16", "shape": [1], "data_offsets": [0, 0]}
    header["v_pred"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    path = write_header(tmp_path / "huge.safetensors", header)
    assert path.stat().st_size > 10_000_000
    d = detect_checkpoint(path)
    assert (d.prediction, d.family) == ("v", "SDXL")
    assert "read safetensors header of huge.safetensors: 200002 entries" in d.reasons


def test_ckpt_is_never_unpickled(tmp_path):
    sentinel = tmp_path / "UNPICKLED"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(sentinel),))

    ckpt = tmp_path / "fluffyrock-vpred.ckpt"
    ckpt.write_bytes(pickle.dumps({"state_dict": Evil()}))
    (tmp_path / "fluffyrock-vpred.yaml").write_text(SD1_VPRED_YAML)
    d = detect_checkpoint(ckpt)
    assert not sentinel.exists()
    assert (d.prediction, d.prediction_source, d.family) == ("v", "yaml", "SD1")
    assert (
        "fluffyrock-vpred.ckpt: a pickle (.ckpt) is never opened; only the YAML and the file name are used"
        in d.reasons
    )
    assert "filename contains 'vpred' (agrees)" in d.reasons


def test_pt_without_yaml_falls_back_to_name_only(tmp_path):
    pt = tmp_path / "plain.pt"
    pt.write_bytes(b"\x80\x04garbage")
    d = detect_checkpoint(pt)
    assert (d.prediction, d.family, d.warnings) == (None, "unknown", ())
    assert any("never opened" in r for r in d.reasons)


def test_fifo_checkpoint_does_not_hang(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(tmp_path / "pipe.safetensors")
    assert_soft_failure(detect_checkpoint(tmp_path / "pipe.safetensors"), "not a regular file")


# --- hostile YAMLs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment", "source"),
    [
        ("model: [unclosed\n  params: {", "is not valid YAML at line", "key"),
        ("model:\n\tparams: 1\n", "is not valid YAML", "key"),
        ("- model\n- params\n", "is a list, not a mapping", "key"),
        ("just a string\n", "is a str, not a mapping", "key"),
        ("", "is null, not a mapping", "key"),
        ("model: ldm\n", "(top).model is a str, expected a mapping", "key"),
        ("other: 1\n", "has no 'model' section", "key"),
        (
            "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params: [1, 2]\n",
            "model.params is a list",
            "key",
        ),
        ("model:\n  target: 7\n  params: {}\n", "neither an ldm nor an sgm class", "key"),
        (
            "model:\n  target: ldm.X\n  params:\n    parameterization: 5\n",
            "LDM accepts only 'eps', 'x0' or 'v'",
            "key",
        ),
        (
            "model:\n  target: ldm.X\n  params:\n    parameterization: V\n",
            "LDM accepts only 'eps', 'x0' or 'v'",
            "key",
        ),
        ("model:\n  target: ldm.X\n  params:\n    parameterization: x0\n", "neither v nor eps", "key"),
        ("model:\n  target: ldm.X\n  params:\n    unet_config: [1]\n", "unet_config is a list", "key"),
        ("model:\n  target: sgm.X\n  params:\n    denoiser_config: 3\n", "denoiser_config is an int", "key"),
        (
            "model:\n  target: sgm.X\n  params:\n    denoiser_config:\n      params:\n        scaling_config:\n"
            "          target: [VScaling]\n",
            "expected a class path",
            "key",
        ),
        ("model:\n  target: ldm.X\n  params:\n    given_betas: [0.1, two]\n", "not a list of betas", "key"),
        ("ztsnr: maybe\n" + SD1_EPS_YAML, "expected true or false", "key"),
        ("a: 2023-13-45\n", "is not valid YAML", "key"),  # a bad timestamp raises ValueError in the constructor
        ("!!python/object/apply:os.system ['echo pwned']\n", "is not valid YAML", "key"),  # safe_load refuses tags
    ],
)
def test_broken_yaml_is_reported(tmp_path, text, fragment, source):
    ckpt = write_st(tmp_path / "m.safetensors", {**SDXL_KEYS, "v_pred": MARK})
    (tmp_path / "m.yaml").write_text(text)
    d = detect_checkpoint(ckpt)
    assert isinstance(d, Detection)
    assert any(fragment in w for w in d.warnings), d.warnings
    # A broken YAML decides nothing; an LDM config with no parameterization means only the default eps, which the
    # v_pred key beats (test_v_pred_key_beats_a_yaml_that_keeps_the_default_eps_with_warning).
    assert d.prediction_source == source
    assert d.prediction == ("v" if source == "key" else "eps")


def test_yaml_wrong_type_context_dim_gives_no_family():
    text = SD1_VPRED_YAML.replace("context_dim: 768", 'context_dim: "768"').replace("FrozenCLIPEmbedder", "Other")
    d = detect.detect_from_yaml_text(text, "x.yaml")
    assert (d.prediction, d.family) == ("v", "unknown")


def test_yaml_alias_bomb_is_harmless():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(20)
    )
    d = detect.detect_from_yaml_text(bomb + SD1_VPRED_YAML, "bomb.yaml")
    assert d.prediction == "v"


def test_yaml_symlink_is_followed(tmp_path):
    ckpt = write_st(tmp_path / "m.safetensors", SD1_KEYS)
    (tmp_path / "real.yaml").write_text(SD1_VPRED_YAML)
    (tmp_path / "m.yaml").symlink_to(tmp_path / "real.yaml")
    d = detect_checkpoint(ckpt)
    assert (d.prediction, d.prediction_source) == ("v", "yaml")
    assert f"YAML m.yaml is a symlink to {tmp_path / 'real.yaml'}" in d.reasons


def test_yaml_broken_symlink(tmp_path):
    ckpt = write_st(tmp_path / "m.safetensors", SD1_KEYS)
    (tmp_path / "m.yaml").symlink_to(tmp_path / "gone.yaml")
    d = detect_checkpoint(ckpt)
    assert (d.prediction, d.family) == (None, "SD1")
    assert any("YAML m.yaml is a broken symlink" in w for w in d.warnings)


def test_yaml_symlink_to_a_fifo_does_not_hang(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    ckpt = write_st(tmp_path / "m.safetensors", SD1_KEYS)
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "m.yaml").symlink_to(tmp_path / "pipe")
    d = detect_checkpoint(ckpt)
    assert any("YAML m.yaml could not be read" in w and "not a regular file" in w for w in d.warnings)


def test_yaml_directory(tmp_path):
    ckpt = write_st(tmp_path / "m.safetensors", SD1_KEYS)
    (tmp_path / "m.yaml").mkdir()
    d = detect_checkpoint(ckpt)
    assert any("YAML m.yaml could not be read" in w and "directory" in w for w in d.warnings)


def test_yaml_unreadable(tmp_path, monkeypatch):
    ckpt = write_st(tmp_path / "m.safetensors", SD1_KEYS)
    yml = tmp_path / "m.yaml"
    yml.write_text(SD1_VPRED_YAML)
    real_open = os.open

    def deny(path, *args, **kwargs):
        if os.fspath(path) == str(yml):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    d = detect_checkpoint(ckpt)
    assert (d.prediction, d.family) == (None, "SD1")
    assert "YAML m.yaml could not be read (PermissionError: Permission denied): ignored" in d.warnings


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root reads any file; chmod is POSIX")
def test_yaml_chmod_000(tmp_path):
    ckpt = write_st(tmp_path / "m.safetensors", SD1_KEYS)
    yml = tmp_path / "m.yaml"
    yml.write_text(SD1_VPRED_YAML)
    yml.chmod(0)
    try:
        d = detect_checkpoint(ckpt)
    finally:
        yml.chmod(0o644)
    assert any("could not be read (PermissionError" in w for w in d.warnings)


def test_yaml_too_large_and_not_utf8(tmp_path):
    ckpt = write_st(tmp_path / "m.safetensors", SD1_KEYS)
    yml = tmp_path / "m.yaml"
    yml.write_text(SD1_VPRED_YAML + "#" * detect.MAX_YAML_BYTES)
    assert any("byte limit" in w for w in detect_checkpoint(ckpt).warnings)
    yml.write_bytes(SD1_VPRED_YAML.encode() + b"# \xff\xfe\n")
    d = detect_checkpoint(ckpt)
    assert d.prediction is None
    assert any("UnicodeDecodeError" in w for w in d.warnings)


def test_yaml_with_bom_is_read():
    assert detect.detect_from_yaml_text("\ufeff" + SD1_VPRED_YAML, "bom.yaml").prediction == "v"


def test_last_resort_never_raises(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(detect, "_filename_findings", boom)
    d = detect_checkpoint(tmp_path / "x.safetensors")
    assert d.prediction is None
    assert d.warnings == ("detection failed (RuntimeError: bug)",)


def test_detect_from_header_tolerates_non_mappings():
    d = detect.detect_from_header(["v_pred"])  # type: ignore[arg-type]
    assert d.prediction is None
    assert any("not a mapping" in w for w in d.warnings)
    assert detect.detect_from_header({"v_pred": {}, "ztsnr": {}}).summary() == "v-pred + ZTSNR (key v_pred; key ztsnr)"
