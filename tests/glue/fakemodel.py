"""A small deterministic stand-in for a loaded SD checkpoint (``shared.sd_model``) and the files behind it.

``apply_model`` is an analytic function of (x, t, cond) — not a trained network, but deterministic, cheap and
sensitive to every input, which is what the glue tests need: bit-for-bit comparisons, the wrapper type chosen, the
timesteps visited and the guidance maths. The checkpoint files on disk are real safetensors files (and YAMLs) so the
extension's detection reads them as it would in the WebUI.
"""

from __future__ import annotations

import types
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from lib_vpred.schedule import scaled_linear_alphas_cumprod

V_YAML = """model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    linear_start: 0.00085
    linear_end: 0.0120
    timesteps: 1000
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        context_dim: 768
"""

SD1_KEYS = {
    "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(1),
}
SDXL_KEYS = {
    "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
    "conditioner.embedders.1.model.ln_final.weight": torch.zeros(1),
}


def write_checkpoint(
    folder: Path, name: str, *, family: str = "SD1", yaml_v: bool = False, keys: tuple[str, ...] = ()
) -> Path:
    """A tiny real safetensors file (header as a checkpoint's), with ``<name>.yaml`` beside it when ``yaml_v``."""
    tensors = dict(SDXL_KEYS if family == "SDXL" else SD1_KEYS)
    for key in keys:
        tensors[key] = torch.tensor([])
    path = folder / f"{name}.safetensors"
    save_file(tensors, str(path))
    if yaml_v:
        (folder / f"{name}.yaml").write_text(V_YAML)
    return path


class FakeSDModel(torch.nn.Module):
    def __init__(
        self,
        checkpoint: Path,
        *,
        parameterization: str = "eps",
        family: str = "SD1",
        cond_stage_key: str = "crossattn",
    ):
        super().__init__()
        from modules import sd_models

        name = checkpoint.stem
        self.sd_checkpoint_info = sd_models.CheckpointInfo(str(checkpoint), name, name)
        self.parameterization = parameterization
        yaml = checkpoint.with_suffix(".yaml")
        self.used_config = str(yaml) if yaml.exists() else None
        self.is_sd1 = family == "SD1"
        self.is_sd2 = family == "SD2"
        self.is_sdxl = family == "SDXL"
        self.is_sd3 = False
        self.cond_stage_key = cond_stage_key
        self.model = types.SimpleNamespace(conditioning_key="crossattn")
        self.latent_channels = 4
        self.alphas_cumprod = scaled_linear_alphas_cumprod().to(torch.float32)
        self.calls: list[torch.Tensor] = []

    def get_learned_conditioning(self, prompts: list[str]) -> torch.Tensor:
        rows = [torch.randn(2, 8, generator=torch.Generator().manual_seed(zlib.crc32(p.encode()))) for p in prompts]
        return torch.stack(rows)

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        self.calls.append(t.detach().clone())
        c = cond["c_crossattn"][0]
        tt = (t.to(torch.float32) / 1000.0).reshape(-1, 1, 1, 1)
        cvec = c.mean(1)[:, :4].reshape(-1, 4, 1, 1)
        return torch.tanh(0.5 * x) * (1.0 - 0.5 * tt) + cvec * (1.0 + tt) + 0.1 * x.flip(-1)
