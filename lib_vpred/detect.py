"""Checkpoint detection: is a checkpoint v-prediction, was it trained with zero terminal SNR, and which family is it.

Signals, strongest first (webui-hooks.md §7 and §10, peers.md §8-9):

1. the YAML config beside the checkpoint (what the WebUI itself uses; ``model.params.parameterization`` for LDM
   SD1/SD2, the sgm ``scaling_config`` for SDXL, an optional top-level ``ztsnr`` marker, ``given_betas``);
2. tensor names in the safetensors header (``v_pred``, ``ztsnr``, ``edm_vpred.sigma_max``/``sigma_min``); a marker
   key's v beats a YAML's eps, which is only the config default (see :func:`_rank`);
3. the header's ``__metadata__`` (Stability ModelSpec, kohya sd-scripts ``ss_*`` keys);
4. hints in the file name (``vpred``, ``ztsnr``, ...), used only when nothing stronger decides.

Detection is factual: a field without evidence stays ``None`` ("unknown"), conflicts are kept in ``warnings``, and
product rules (what ``Auto`` means) belong to the caller. Only the 8-byte length and the JSON header of a
safetensors file are read, never tensor data; pickles (``.ckpt``, ``.pt``) are never opened; nothing is ever written.
No function here raises on a bad file: every failure becomes a reason or a warning on the returned
:class:`Detection`. Pure: standard library and PyYAML, plus one constant from :mod:`lib_vpred.schedule` (torch).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import stat
import struct
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import yaml

from lib_vpred.schedule import ZERO_SNR_THRESHOLD

logger = logging.getLogger("vpred")

Prediction = Literal["v", "eps"]
Family = Literal["SD1", "SD2", "SDXL", "unknown"]
#: Where a decision came from. ``webui``: what the loaded WebUI model reports (:func:`detect_from_webui_model`).
Source = Literal["yaml", "key", "metadata", "webui", "filename"]
Field = Literal["prediction", "ztsnr", "family", "edm"]

#: Precedence of the sources, strongest first. The YAML wins because the WebUI (v1.10.1) samples as it says; one
#: exception, a YAML's eps against a marker key's v (:func:`_rank`).
SOURCE_PRECEDENCE: tuple[Source, ...] = ("yaml", "key", "metadata", "webui", "filename")
_RANK: dict[str, int] = {s: i for i, s in enumerate(SOURCE_PRECEDENCE)}

#: Largest safetensors JSON header we accept: the limit of the safetensors reference implementation
#: (``MAX_HEADER_SIZE = 100_000_000`` in huggingface/safetensors ``safetensors/src/tensor.rs``). Real SD headers are
#: 20-300 KB; only the bytes announced by the 8-byte prefix are read, never this much up front.
DEFAULT_MAX_HEADER_BYTES = 100_000_000

#: Largest YAML config we read. Stock LDM/sgm configs are 2-5 KB; a ``given_betas`` list of 1000 floats is ~25 KB.
MAX_YAML_BYTES = 1 << 20

#: Extensions of pickle-based checkpoints: never opened (unpickling runs code); only the YAML and the name are used.
PICKLE_EXTENSIONS: frozenset[str] = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"})

#: Empty marker tensors in the state dict. ``v_pred``/``ztsnr``: NoobAI-XL V-Pred and others; written per A1111
#: PR #16567 (``state_dict['v_pred'] = torch.tensor([])``), read by ComfyUI ``comfy/supported_models.py``
#: (``SDXL.model_type``), Forge, reForge and A1111 ``dev``. ``edm_vpred.*``: CosXL (ComfyUI ``V_PREDICTION_EDM``).
#: ``edm_mean``/``edm_std``: Playground v2.5 (ComfyUI ``ModelType.EDM``, neither v nor eps).
KEY_V_PRED = "v_pred"
KEY_ZTSNR = "ztsnr"
KEYS_EDM_VPRED = ("edm_vpred.sigma_max", "edm_vpred.sigma_min")
KEYS_EDM_PLAYGROUND = ("edm_mean", "edm_std")
#: Prefixes under which a marker key is also accepted (UNet-only exports). Other UIs look for the bare key only.
_MARKER_PREFIXES = ("", "model.diffusion_model.", "model.")

#: Text-encoder key prefixes, as A1111 ``sd_models_config.guess_model_config_from_state_dict`` (v1.10.1) tells the
#: families apart: OpenCLIP ViT-bigG at ``conditioner.embedders.1`` (SDXL base) or ``.0`` (SDXL refiner), OpenCLIP
#: ViT-H at ``cond_stage_model.model`` (SD2), Hugging Face CLIP ViT-L at ``cond_stage_model.transformer`` (SD1).
PREFIX_SDXL_BASE = "conditioner.embedders.1."
PREFIX_SDXL_REFINER = "conditioner.embedders.0.model."
PREFIX_SD2 = "cond_stage_model.model."
PREFIX_SD1 = "cond_stage_model.transformer."
#: (prefix, family, description, exact keys that settle it at once), in priority order.
_FAMILY_PREFIXES: tuple[tuple[str, Family, str, tuple[str, ...]], ...] = (
    (PREFIX_SDXL_BASE, "SDXL", "(OpenCLIP ViT-bigG): SDXL", ("conditioner.embedders.1.model.ln_final.weight",)),
    (PREFIX_SDXL_REFINER, "SDXL", "only: SDXL refiner", ("conditioner.embedders.0.model.ln_final.weight",)),
    (
        PREFIX_SD2,
        "SD2",
        "(OpenCLIP ViT-H): SD2",
        (
            "cond_stage_model.model.ln_final.weight",
            "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
        ),
    ),
    (
        PREFIX_SD1,
        "SD1",
        "(CLIP ViT-L): SD1",
        (
            "cond_stage_model.transformer.text_model.final_layer_norm.weight",
            "cond_stage_model.transformer.final_layer_norm.weight",
        ),
    ),
)

#: UNet cross-attention width (``context_dim``: the second dim of ``attn2.to_k.weight``) per family, for UNet-only
#: files with or without the ``model.diffusion_model.`` prefix (LDM and diffusers key layouts both end this way).
CONTEXT_DIM_FAMILY: dict[int, Family] = {768: "SD1", 1024: "SD2", 2048: "SDXL", 1280: "SDXL"}
_ATTN2_TO_K = re.compile(r"(?:^|\.)transformer_blocks\.\d+\.attn2\.to_k\.weight$")
_LORA_KEY = re.compile(r"^lora_(?:unet|te\d?)_|\.lora_(?:down|up|A|B)\.|\.hada_w1_a$|\.lokr_w1$")

#: Metadata keys. ``modelspec.*``: Stability-AI/ModelSpec README ("prediction_type: In Stable Diffusion, ``v`` or
#: ``epsilon``"; architecture IDs ``stable-diffusion-v1``, ``-v2-512``, ``-v2-768-v``, ``-xl-v1-base``/``-refiner``;
#: adapters add ``-lora``/``-textual-inversion``, kohya writes ``/lora``), also written by kohya sd-scripts
#: ``library/sai_model_spec.py``. ``ss_*``: kohya sd-scripts ``train_network.py`` (LoRA training metadata, values
#: ``str()``-ed so booleans are "True"/"False"; checked at 48d368f): ``ss_v2`` means SD2 (not v-prediction),
#: ``ss_base_model_version`` is ``sd_v1``/``sd_v2`` plus ``_v`` for v-parameterization, or ``sdxl_base_v1-0``;
#: ``ss_zero_terminal_snr`` is ``--zero_terminal_snr``. ``ss_v_parameterization`` is NOT written by sd-scripts; some
#: third-party tools write it ("true"/"false"), so it is read, below ModelSpec. No standard ZTSNR key exists in
#: ModelSpec; ``ss_zero_terminal_snr`` is the only metadata ZTSNR signal found.
META_PREDICTION_TYPE = "modelspec.prediction_type"
META_ARCHITECTURE = "modelspec.architecture"
META_SS_V_PARAMETERIZATION = "ss_v_parameterization"
META_SS_BASE_MODEL_VERSION = "ss_base_model_version"
META_SS_V2 = "ss_v2"
META_SS_ZTSNR = "ss_zero_terminal_snr"

_PREDICTION_VALUES: dict[str, Prediction] = {
    "v": "v",
    "v_prediction": "v",
    "v-prediction": "v",
    "vpred": "v",
    "v_pred": "v",
    "epsilon": "eps",
    "eps": "eps",
}
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})

#: sgm ``denoiser_scaling`` classes (Stability-AI/generative-models): v-prediction vs eps. ``VScalingWithEDMcNoise``
#: is the CosXL-style v scaling. ``EDMScaling`` is EDM preconditioning: neither.
_SGM_SCALING: dict[str, Prediction] = {"VScaling": "v", "VScalingWithEDMcNoise": "v", "EpsScaling": "eps"}
#: The only values LDM ``DDPM.__init__`` accepts (it asserts).
_LDM_PARAMETERIZATIONS = ("eps", "x0", "v")

#: File-name hints (weakest signal), matched on the lower-cased base name without extension.
_NAME_VPRED = re.compile(r"v[-_ .]?pred(?:iction)?(?![a-z])")
_NAME_ZTSNR = re.compile(r"z(?:ero)?[-_ .]?(?:t(?:erminal)?[-_ .]?)?snr|terminal[-_ .]?snr")

_NO_EVIDENCE: dict[str, str] = {
    "prediction": "no prediction-type evidence (YAML, marker key, metadata or file name)",
    "ztsnr": "no ZTSNR evidence",
    "family": "family unknown: no recognisable YAML, key names or metadata",
}


class HeaderError(ValueError):
    """A safetensors header could not be read; the message says why (missing file, truncated, not JSON, ...)."""


@dataclasses.dataclass(frozen=True)
class Claim:
    """One piece of evidence: ``field`` has ``value`` according to ``source``.

    ``label`` is short, for :meth:`Detection.summary` (``"key ztsnr"``); ``reason`` is a full sentence.
    """

    field: Field
    value: str | bool
    source: Source
    label: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Detection:
    """What is known about a checkpoint. Immutable and hashable; equal inputs give equal detections (cacheable).

    ``prediction``: ``"v"``, ``"eps"`` or None (unknown). ``ztsnr``: True, False or None (unknown; also None for
    EDM checkpoints, where ZTSNR does not apply). ``family``: ``"SD1"``, ``"SD2"``, ``"SDXL"`` or ``"unknown"``.
    ``*_source``: which signal decided each field. ``edm``: a v-prediction checkpoint with its own EDM sigma range
    (CosXL). ``reasons``: one line per decision, then supporting evidence and what was read. ``warnings``:
    conflicts and problems the user may need to act on.
    """

    prediction: Prediction | None = None
    ztsnr: bool | None = None
    family: Family = "unknown"
    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    prediction_source: Source | None = None
    ztsnr_source: Source | None = None
    family_source: Source | None = None
    edm: bool = False
    #: The YAML consulted (the sibling or ``yaml_path``, even if unreadable), to compare with ``sd_model.used_config``.
    yaml_path: str | None = None
    #: The raw evidence, kept so that detections can be combined with :func:`merge`.
    claims: tuple[Claim, ...] = dataclasses.field(default=(), repr=False)
    notes: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    problems: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    @property
    def sources(self) -> dict[str, Source | None]:
        """Where each field came from: ``{"prediction": "yaml", "ztsnr": "key", "family": "key"}``."""
        return {"prediction": self.prediction_source, "ztsnr": self.ztsnr_source, "family": self.family_source}

    def summary(self) -> str:
        """One line for humans, e.g. ``"SDXL v-pred + ZTSNR (key v_pred; key ztsnr)"``."""
        head = {"v": "v-pred", "eps": "eps", None: "prediction unknown"}[self.prediction]
        if self.edm:
            head += " EDM, ZTSNR n/a"
        elif self.ztsnr is True:
            head += " + ZTSNR"
        elif self.ztsnr is False:
            head += ", no ZTSNR"
        else:
            head += ", ZTSNR unknown"
        if self.family != "unknown":
            head = f"{self.family} {head}"
        labels = [c.label for c in (_winner(self.claims, "prediction"), _winner(self.claims, "ztsnr")) if c]
        if self.edm:
            labels = [c.label for c in (_winner(self.claims, "prediction"), _winner(self.claims, "edm")) if c]
        labels = list(dict.fromkeys(labels))
        return f"{head} ({'; '.join(labels)})" if labels else head

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for the HTTP API and logs)."""
        return {
            "prediction": self.prediction,
            "ztsnr": self.ztsnr,
            "family": self.family,
            "edm": self.edm,
            "sources": self.sources,
            "summary": self.summary(),
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
            "yaml_path": self.yaml_path,
        }


class _Findings:
    """Mutable collector used while reading one signal; :func:`_resolve` turns it into a :class:`Detection`."""

    def __init__(self) -> None:
        self.claims: list[Claim] = []
        self.notes: list[str] = []
        self.problems: list[str] = []
        self.yaml_path: str | None = None

    def claim(self, field: Field, value: str | bool, source: Source, label: str, reason: str) -> None:
        self.claims.append(Claim(field, value, source, label, reason))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def problem(self, text: str) -> None:
        """A problem is both a reason (it explains the outcome) and a warning (the user may need to act)."""
        self.problems.append(text)

    def detection(self) -> Detection:
        return _resolve(self.claims, self.notes, self.problems, self.yaml_path)


def _rank(c: Claim) -> float:
    """Strength of a claim (lower wins): its source's place in :data:`SOURCE_PRECEDENCE`, except that a YAML's eps
    ranks just below a marker key. eps is what a config says unless told otherwise (LDM without ``parameterization``,
    sgm's stock ``EpsScaling``) and what the WebUI's stock configs say for a checkpoint without a YAML, while a
    ``v_pred`` / ``edm_vpred.*`` key is the checkpoint's own statement (NoobAI-XL V-Pred, CosXL): such a checkpoint
    is v with a YAML that keeps the stock eps scaling just as without one. A YAML's v still beats everything."""
    if c.field == "prediction" and c.source == "yaml" and c.value == "eps":
        return _RANK["key"] + 0.5
    return _RANK[c.source]


def _winner(claims: Iterable[Claim], field: str) -> Claim | None:
    """The claim that decides ``field``: the strongest (:func:`_rank`); within one rank, the first stated."""
    best: Claim | None = None
    for c in claims:
        if c.field == field and (best is None or _rank(c) < _rank(best)):
            best = c
    return best


def _resolve(
    claims: Iterable[Claim], notes: Iterable[str], problems: Iterable[str], yaml_path: str | None
) -> Detection:
    claims = tuple(claims)
    reasons: list[str] = []
    supporting: list[str] = []
    conflicts: list[str] = []
    decided: dict[str, Claim | None] = {}
    for field in ("prediction", "ztsnr", "family", "edm"):
        win = _winner(claims, field)
        decided[field] = win
        if win is None:
            if field != "edm":
                reasons.append(_NO_EVIDENCE[field])
            continue
        reasons.append(win.reason)
        for c in claims:
            if c.field != field or c is win:
                continue
            if c.value == win.value:
                supporting.append(f"{c.reason} (agrees)")
                continue
            hint = ""
            if win.source == "yaml" and field == "prediction":
                hint = "; WebUI v1.10.1 samples it as the YAML says"
            elif win.source == "key" and c.source == "yaml" and field == "prediction":
                hint = "; the YAML's eps is only the config default (the WebUI alone would sample eps)"
            elif win.source == "yaml" and field == "family":
                hint = "; the YAML may not fit this checkpoint (the WebUI may fail to load it)"
            conflicts.append(f"conflicting {field}: {win.reason}, but {c.reason}; using the {win.source}{hint}")

    prediction = decided["prediction"]
    ztsnr = decided["ztsnr"]
    family = decided["family"]
    edm = decided["edm"] is not None and prediction is not None and prediction.value == "v"
    if edm:
        reasons.append("ZTSNR not applicable: an EDM v-prediction checkpoint (CosXL-style) has its own sigma range")
        if ztsnr is not None:
            conflicts.append(f"ZTSNR evidence ignored for an EDM checkpoint: {ztsnr.reason}")
            reasons.remove(ztsnr.reason)
        else:
            reasons.remove(_NO_EVIDENCE["ztsnr"])
        ztsnr = None
    problems = tuple(problems)
    return Detection(
        prediction=prediction.value if prediction else None,  # type: ignore[arg-type]
        ztsnr=ztsnr.value if ztsnr else None,  # type: ignore[arg-type]
        family=family.value if family else "unknown",  # type: ignore[arg-type]
        reasons=tuple(dict.fromkeys([*reasons, *supporting, *problems, *notes])),
        warnings=tuple(dict.fromkeys([*conflicts, *problems])),
        prediction_source=prediction.source if prediction else None,
        ztsnr_source=ztsnr.source if ztsnr else None,
        family_source=family.source if family else None,
        edm=edm,
        yaml_path=yaml_path,
        claims=claims,
        notes=tuple(notes),
        problems=problems,
    )


def merge(*detections: Detection) -> Detection:
    """Combine partial detections (e.g. :func:`detect_checkpoint` and :func:`detect_from_webui_model`).

    The evidence is pooled and re-resolved with :data:`SOURCE_PRECEDENCE`, so the order of the arguments only
    matters between claims of the same source (the first wins).
    """
    claims: list[Claim] = []
    notes: list[str] = []
    problems: list[str] = []
    yaml_path = None
    for d in detections:
        claims.extend(d.claims)
        notes.extend(d.notes)
        problems.extend(d.problems)
        yaml_path = yaml_path or d.yaml_path
    return _resolve(claims, notes, problems, yaml_path)


# --- safetensors header -------------------------------------------------------------------------------------------


def _open_regular(path: str | os.PathLike[str]) -> tuple[int, os.stat_result]:
    """Open read-only without blocking (a FIFO must not hang us) and insist on a regular file."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise IsADirectoryError(f"{os.fspath(path)!r} is {kind}")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _read_exactly(fd: int, n: int) -> bytes:
    chunks: list[bytes] = []
    left = n
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_safetensors_header(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> dict[str, Any]:
    """The JSON header of a safetensors file: tensor names -> ``{dtype, shape, data_offsets}``, plus ``__metadata__``.

    Reads only the 8-byte little-endian header length and the header itself (format: huggingface/safetensors
    README), never tensor data; opens read-only and never unpickles. Raises :class:`HeaderError` for anything that is
    not a readable regular file with a valid header (missing, directory, shorter than 8 bytes, length beyond the
    file or ``max_bytes``, not UTF-8, not JSON, not a JSON object).
    """
    try:
        fd, st = _open_regular(path)
    except OSError as e:
        raise HeaderError(f"cannot open: {e.strerror or e}") from e
    try:
        size = st.st_size
        if size < 8:
            raise HeaderError(f"file is {size} bytes, shorter than the 8-byte safetensors header length")
        prefix = _read_exactly(fd, 8)
        if len(prefix) < 8:
            raise HeaderError("file ended inside the 8-byte header length")
        (n,) = struct.unpack("<Q", prefix)
        if n < 2:
            raise HeaderError(f"header length {n} is too small for a JSON object")
        if n > max_bytes:
            raise HeaderError(f"header length {n} exceeds the {max_bytes}-byte limit")
        if 8 + n > size:
            raise HeaderError(f"header length {n} runs past the end of the {size}-byte file (truncated?)")
        raw = _read_exactly(fd, n)
    except OSError as e:
        raise HeaderError(f"read failed: {e.strerror or e}") from e
    finally:
        os.close(fd)
    if len(raw) < n:
        raise HeaderError(f"file ended after {len(raw)} of {n} header bytes")
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise HeaderError(f"header is not UTF-8 (byte {e.start})") from e
    except (ValueError, RecursionError) as e:
        raise HeaderError(f"header is not valid JSON ({str(e)[:80]})") from e
    if not isinstance(header, dict):
        raise HeaderError(f"header is a JSON {type(header).__name__}, not an object")
    return header


def _marker(keys: Mapping[str, Any], name: str) -> str | None:
    """The key under which marker ``name`` is present (bare or under a UNet prefix), or None."""
    for prefix in _MARKER_PREFIXES:
        if prefix + name in keys:
            return prefix + name
    return None


def _family_from_keys(header: Mapping[str, Any], f: _Findings) -> None:
    # Fast path: one exact key per family (dict lookups); the full scan below covers unusual layouts.
    for prefix, family, what, probes in _FAMILY_PREFIXES:
        if any(k in header for k in probes):
            f.claim("family", family, "key", f"keys {family}", f"keys '{prefix}*' {what}")
            return
    seen = [False] * len(_FAMILY_PREFIXES)
    lora = False
    for k in header:
        for i, (prefix, *_) in enumerate(_FAMILY_PREFIXES):
            if k.startswith(prefix):
                seen[i] = True
                break
        else:
            if not lora and ("lora" in k or "hada" in k or "lokr" in k) and _LORA_KEY.search(k):
                lora = True
    if lora:
        f.problem("tensor names look like a LoRA/LyCORIS adapter, not a full checkpoint")
    for i, (prefix, family, what, _) in enumerate(_FAMILY_PREFIXES):
        if seen[i]:
            f.claim("family", family, "key", f"keys {family}", f"keys '{prefix}*' {what}")
            return
    # UNet-only file: tell the families apart by the cross-attention width.
    for k, entry in header.items():
        if "attn2.to_k" not in k or not _ATTN2_TO_K.search(k) or not isinstance(entry, Mapping):
            continue
        shape = entry.get("shape")
        if isinstance(shape, list) and len(shape) == 2 and all(type(d) is int for d in shape):
            family = CONTEXT_DIM_FAMILY.get(shape[1])
            if family:
                reason = f"UNet cross-attention width {shape[1]} (key '{k}'): {family}"
                f.claim("family", family, "key", f"keys {family}", reason)
                return


def _flag(value: str) -> bool | None:
    v = value.strip().lower()
    return True if v in _TRUE else False if v in _FALSE else None


def _metadata(header: Mapping[str, Any], f: _Findings) -> None:
    if "__metadata__" not in header:
        f.note("no safetensors __metadata__")
        return
    raw = header["__metadata__"]
    if not isinstance(raw, Mapping):
        f.problem(f"safetensors __metadata__ is a JSON {type(raw).__name__}, not an object: ignored")
        return
    meta = {k: v for k, v in raw.items() if isinstance(v, str)}
    bad = [k for k in raw if k not in meta]
    if bad:
        shown = ", ".join(repr(k) for k in bad[:3]) + (", ..." if len(bad) > 3 else "")
        f.problem(
            f"{len(bad)} safetensors __metadata__ value(s) are not strings (ignored: {shown}); "
            "the safetensors library may refuse to load this file"
        )

    def said(key: str) -> str:
        return f"metadata {key} = {meta[key]!r}"

    if META_PREDICTION_TYPE in meta:
        pred = _PREDICTION_VALUES.get(meta[META_PREDICTION_TYPE].strip().lower())
        if pred:
            f.claim("prediction", pred, "metadata", f"metadata {META_PREDICTION_TYPE}", said(META_PREDICTION_TYPE))
        else:
            f.problem(f"{said(META_PREDICTION_TYPE)} is neither v nor epsilon: ignored")
    if META_SS_V_PARAMETERIZATION in meta:
        flag = _flag(meta[META_SS_V_PARAMETERIZATION])
        if flag is not None:
            pred = "v" if flag else "eps"
            f.claim(
                "prediction",
                pred,
                "metadata",
                f"metadata {META_SS_V_PARAMETERIZATION}",
                said(META_SS_V_PARAMETERIZATION),
            )
    version = meta.get(META_SS_BASE_MODEL_VERSION, "").strip().lower()
    if version in ("sd_v1", "sd_v1_v", "sd_v2", "sd_v2_v"):
        label = f"metadata {META_SS_BASE_MODEL_VERSION}"
        pred = "v" if version.endswith("_v") else "eps"
        f.claim("prediction", pred, "metadata", label, said(META_SS_BASE_MODEL_VERSION))
        f.claim(
            "family",
            "SD2" if version.startswith("sd_v2") else "SD1",
            "metadata",
            label,
            said(META_SS_BASE_MODEL_VERSION),
        )
    elif version.startswith("sdxl"):
        label = f"metadata {META_SS_BASE_MODEL_VERSION}"
        f.claim("family", "SDXL", "metadata", label, said(META_SS_BASE_MODEL_VERSION))
    arch = meta.get(META_ARCHITECTURE, "").strip().lower()
    if arch:
        label = f"metadata {META_ARCHITECTURE}"
        base, _, adapter = arch.partition("/")
        for suffix in ("-lora", "-textual-inversion"):
            if base.endswith(suffix):
                base, adapter = base[: -len(suffix)], suffix[1:]
        if adapter:
            f.problem(f"{said(META_ARCHITECTURE)}: an adapter ({adapter}), not a full checkpoint")
        if base.startswith("stable-diffusion-xl"):
            f.claim("family", "SDXL", "metadata", label, said(META_ARCHITECTURE))
        elif base.startswith("stable-diffusion-v2"):
            f.claim("family", "SD2", "metadata", label, said(META_ARCHITECTURE))
            # ModelSpec: SD2 512 (eps) and 768-v differ in inference requirements, so the ID states the prediction.
            if base == "stable-diffusion-v2-768-v":
                f.claim("prediction", "v", "metadata", label, said(META_ARCHITECTURE))
            elif base == "stable-diffusion-v2-512":
                f.claim("prediction", "eps", "metadata", label, said(META_ARCHITECTURE))
        elif base.startswith("stable-diffusion-v1"):
            f.claim("family", "SD1", "metadata", label, said(META_ARCHITECTURE))
    if meta.get(META_SS_V2, "").strip().lower() == "true":
        f.claim("family", "SD2", "metadata", f"metadata {META_SS_V2}", said(META_SS_V2))
    if META_SS_ZTSNR in meta:
        flag = _flag(meta[META_SS_ZTSNR])
        if flag is not None:
            f.claim("ztsnr", flag, "metadata", f"metadata {META_SS_ZTSNR}", said(META_SS_ZTSNR))


def _header_findings(header: Mapping[str, Any], f: _Findings) -> None:
    v_pred = _marker(header, KEY_V_PRED)
    if v_pred:
        f.claim("prediction", "v", "key", f"key {v_pred}", f"safetensors key '{v_pred}' present")
    edm = next((k for k in (_marker(header, n) for n in KEYS_EDM_VPRED) if k), None)
    if edm:
        reason = f"safetensors key '{edm}' present (EDM v-prediction, CosXL-style)"
        f.claim("prediction", "v", "key", f"key {edm}", reason)
        f.claim("edm", True, "key", f"key {edm}", reason)
    ztsnr = _marker(header, KEY_ZTSNR)
    if ztsnr:
        f.claim("ztsnr", True, "key", f"key {ztsnr}", f"safetensors key '{ztsnr}' present")
        if not v_pred and not edm:
            f.note(f"key '{ztsnr}' without 'v_pred': ComfyUI honours it only with 'v_pred'; Forge/reForge always")
    for key in (k for k in (v_pred, edm, ztsnr) if k and k not in (KEY_V_PRED, KEY_ZTSNR, *KEYS_EDM_VPRED)):
        f.note(f"marker key '{key}' is prefixed; ComfyUI, Forge and A1111 dev look for the bare name only")
    if all(k in header for k in KEYS_EDM_PLAYGROUND):
        f.problem("keys 'edm_mean'/'edm_std' (Playground v2.5-style EDM): neither v nor eps in the LDM sense")
    _family_from_keys(header, f)
    _metadata(header, f)


def detect_from_header(header: Mapping[str, Any]) -> Detection:
    """Detection from a safetensors header dict (tensor names and ``__metadata__``), e.g. from
    :func:`read_safetensors_header`. Tolerates any JSON-shaped input: odd entries are reported, never raised."""
    f = _Findings()
    if not isinstance(header, Mapping):
        f.problem(f"safetensors header is {_kind(header)}, not a mapping")
        return f.detection()
    _header_findings(header, f)
    return f.detection()


# --- YAML ---------------------------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    """``"null"``, ``"a list"``, ``"an int"``, ... for messages about wrong YAML/JSON types."""
    if value is None:
        return "null"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _sub(node: Mapping[str, Any], key: str, where: str, f: _Findings, name: str) -> Mapping[str, Any] | None:
    """``node[key]`` if it is a mapping; None (with a problem recorded when it exists but is not a mapping)."""
    value = node.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        f.problem(f"YAML {name}: {where}.{key} is {_kind(value)}, expected a mapping: ignored")
        return None
    return value


def _yaml_ldm(model: Mapping[str, Any], params: Mapping[str, Any] | None, f: _Findings, name: str) -> None:
    params = params or {}
    if "parameterization" in params:
        value = params["parameterization"]
        where = f"YAML {name}: model.params.parameterization"
        if isinstance(value, str) and value in ("v", "eps"):
            f.claim("prediction", value, "yaml", f"YAML parameterization {value}", f"{where} is {value!r}")
        elif isinstance(value, str) and value in _LDM_PARAMETERIZATIONS:
            f.problem(f"{where} is {value!r}: neither v nor eps")
        else:
            f.problem(f"{where} is {value!r}: LDM accepts only 'eps', 'x0' or 'v' (the WebUI will fail to load it)")
    else:
        f.claim(
            "prediction",
            "eps",
            "yaml",
            "YAML parameterization absent (eps)",
            f"YAML {name}: model.params.parameterization absent: LDM default 'eps'",
        )
    unet = _sub(params, "unet_config", "model.params", f, name)
    unet_params = _sub(unet, "params", "model.params.unet_config", f, name) if unet else None
    ctx = unet_params.get("context_dim") if unet_params else None
    if type(ctx) is int and ctx in (768, 1024):
        family = CONTEXT_DIM_FAMILY[ctx]
        f.claim("family", family, "yaml", f"YAML {family}", f"YAML {name}: unet_config context_dim {ctx}: {family}")
        return
    if ctx is not None:
        f.note(f"YAML {name}: unet_config context_dim {ctx!r} is not an SD1/SD2 width")
    cond = _sub(params, "cond_stage_config", "model.params", f, name)
    target = cond.get("target") if cond else None
    if isinstance(target, str):
        cls = target.rsplit(".", 1)[-1]
        family = {"FrozenCLIPEmbedder": "SD1", "FrozenOpenCLIPEmbedder": "SD2"}.get(cls)
        if family:
            f.claim("family", family, "yaml", f"YAML {family}", f"YAML {name}: cond_stage_config {cls}: {family}")


def _yaml_sgm(model: Mapping[str, Any], params: Mapping[str, Any] | None, f: _Findings, name: str) -> None:
    f.claim("family", "SDXL", "yaml", "YAML SDXL", f"YAML {name}: model.target {model['target']}: SDXL (sgm)")
    den = _sub(params or {}, "denoiser_config", "model.params", f, name)
    den_params = _sub(den, "params", "model.params.denoiser_config", f, name) if den else None
    scaling = (
        _sub(den_params, "scaling_config", "model.params.denoiser_config.params", f, name) if den_params else None
    )
    target = scaling.get("target") if scaling else None
    where = f"YAML {name}: model.params.denoiser_config.params.scaling_config.target"
    if not isinstance(target, str):
        if target is not None:
            f.problem(f"{where} is {_kind(target)}, expected a class path")
        else:
            f.note(f"YAML {name}: no denoiser_config.params.scaling_config.target (sgm)")
        return
    cls = target.rsplit(".", 1)[-1]
    pred = _SGM_SCALING.get(cls)
    if pred:
        f.claim("prediction", pred, "yaml", f"YAML {cls}", f"{where} is {cls}")
    else:
        f.problem(f"{where} is {cls}: neither v nor eps scaling")


def _yaml_given_betas(params: Mapping[str, Any] | None, f: _Findings, name: str) -> None:
    """``model.params.given_betas`` (A1111 ``patch_given_betas``, PR #13276) fixes the schedule: judge its SNR_T."""
    betas = params.get("given_betas") if params else None
    if betas is None:
        return
    where = f"YAML {name}: model.params.given_betas"
    if (
        not isinstance(betas, list)
        or len(betas) < 2
        or not all(type(b) in (int, float) and math.isfinite(b) and 0.0 <= b <= 1.0 for b in betas)
    ):
        f.problem(f"{where} is not a list of betas in [0, 1]: ignored")
        return
    alpha_bar_t = math.prod(1.0 - float(b) for b in betas)
    zero = alpha_bar_t < ZERO_SNR_THRESHOLD
    f.claim(
        "ztsnr",
        zero,
        "yaml",
        "YAML given_betas",
        f"{where}: terminal alpha_bar {alpha_bar_t:.3g} ({'zero' if zero else 'non-zero'} terminal SNR)",
    )


def detect_from_yaml_text(text: str, name: str = "config.yaml") -> Detection:
    """Detection from the text of a WebUI model YAML (``yaml.safe_load`` only); ``name`` is used in the reasons.

    LDM (SD1/SD2): ``model.params.parameterization`` ``"v"`` -> v, ``"eps"`` or absent -> eps; family from the UNet
    ``context_dim`` (768 SD1, 1024 SD2) or the text encoder class. sgm (SDXL): the ``scaling_config`` class
    (``VScaling`` -> v, ``EpsScaling`` -> eps). A top-level ``ztsnr: true/false`` (ignored by the WebUI, see
    webui-hooks.md §7) or ``model.params.given_betas`` decide ZTSNR.
    """
    f = _Findings()
    _yaml_findings(text, name, f)
    return f.detection()


def _yaml_findings(text: str, name: str, f: _Findings) -> None:
    try:
        root = yaml.safe_load(text)
    except Exception as e:  # YAMLError, and ValueError/RecursionError from hostile scalars or nesting
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        f.problem(f"YAML {name} is not valid YAML{where} ({type(e).__name__}): the WebUI will fail to load it too")
        return
    if not isinstance(root, Mapping):
        f.problem(f"YAML {name} is {_kind(root)}, not a mapping: ignored")
        return
    if "ztsnr" in root:
        value = root["ztsnr"]
        if isinstance(value, bool):
            f.claim("ztsnr", value, "yaml", "YAML ztsnr", f"YAML {name}: top-level ztsnr is {str(value).lower()}")
        else:
            f.problem(f"YAML {name}: top-level ztsnr is {value!r}, expected true or false: ignored")
    model = _sub(root, "model", "(top)", f, name)
    if model is None:
        if "model" not in root:
            f.problem(f"YAML {name} has no 'model' section: not a model config")
        return
    params = _sub(model, "params", "model", f, name)
    target = model.get("target")
    if isinstance(target, str) and target.startswith("sgm."):
        _yaml_sgm(model, params, f, name)
    elif isinstance(target, str) and target.startswith("ldm."):
        if params is None and "params" in model:
            return  # not a mapping (already reported): no "absent means eps" default from a broken config
        _yaml_ldm(model, params, f, name)
    else:
        f.problem(f"YAML {name}: model.target {target!r} is neither an ldm nor an sgm class")
        value = params.get("parameterization") if params else None
        if value in ("v", "eps"):
            f.claim(
                "prediction",
                value,
                "yaml",
                f"YAML parameterization {value}",
                f"YAML {name}: model.params.parameterization is {value!r}",
            )
    _yaml_given_betas(params, f, name)


def _read_text(path: str, limit: int) -> str:
    fd, st = _open_regular(path)
    try:
        if st.st_size > limit:
            raise ValueError(f"{st.st_size} bytes, more than the {limit}-byte limit")
        data = _read_exactly(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"more than the {limit}-byte limit")
    return data.decode("utf-8-sig")


def detect_from_yaml_file(path: str | os.PathLike[str]) -> Detection:
    """Detection from a YAML file (read-only, at most :data:`MAX_YAML_BYTES`, regular files only; symlinks are
    followed, as the WebUI does). Unreadable or broken files give a Detection with the reason, never an exception."""
    f = _Findings()
    _yaml_file_findings(os.fspath(path), f)
    return f.detection()


def _yaml_file_findings(path: str, f: _Findings) -> None:
    name = os.path.basename(path)
    f.yaml_path = path
    if os.path.islink(path):
        target = os.path.realpath(path)
        if not os.path.exists(path):
            f.problem(f"YAML {name} is a broken symlink (to {target}): ignored")
            return
        f.note(f"YAML {name} is a symlink to {target}")
    try:
        text = _read_text(path, MAX_YAML_BYTES)
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        f.problem(f"YAML {name} could not be read ({type(e).__name__}: {why}): ignored")
        return
    f.note(f"read YAML {name}")
    _yaml_findings(text, name, f)


# --- file name and loaded model -----------------------------------------------------------------------------------


def _filename_findings(name: str, f: _Findings) -> None:
    stem = os.path.splitext(os.path.basename(name))[0].lower()
    m = _NAME_VPRED.search(stem)
    if m:
        f.claim("prediction", "v", "filename", f"filename '{m.group()}'", f"filename contains {m.group()!r}")
    m = _NAME_ZTSNR.search(stem)
    if m:
        f.claim("ztsnr", True, "filename", f"filename '{m.group()}'", f"filename contains {m.group()!r}")


def detect_from_filename(name: str | os.PathLike[str]) -> Detection:
    """Hints in a checkpoint's base name (the weakest signal): ``vpred``/``v-pred``/``v_pred``/``v-prediction`` ->
    v; ``ztsnr``/``zsnr``/``zerosnr``/``zero-terminal-snr``/``terminal-snr`` -> ZTSNR. Directory names are ignored."""
    f = _Findings()
    _filename_findings(os.fspath(name), f)
    return f.detection()


def detect_from_webui_model(
    parameterization: str | None,
    *,
    is_sd1: bool = False,
    is_sd2: bool = False,
    is_sdxl: bool = False,
    used_config: str | None = None,
) -> Detection:
    """What the loaded WebUI model reports (``sd_model.parameterization``, ``is_sd1``/``is_sd2``/``is_sdxl``).

    Ranked below the file's own evidence: without a YAML the WebUI's value is a default (SD1, SDXL) or the SD2
    one-step heuristic. :func:`merge` it with :func:`detect_checkpoint` to get conflicts such as "key ``v_pred``
    present but the WebUI samples eps" as warnings.
    """
    f = _Findings()
    config = f" (config {os.path.basename(used_config)})" if used_config else ""
    if parameterization in ("v", "eps"):
        f.claim(
            "prediction",
            parameterization,
            "webui",
            f"WebUI parameterization {parameterization}",
            f"WebUI model parameterization is {parameterization!r}{config}",
        )
    elif parameterization is not None:
        f.note(f"WebUI model parameterization is {parameterization!r}{config}")
    for flag, family in ((is_sdxl, "SDXL"), (is_sd2, "SD2"), (is_sd1, "SD1")):
        if flag:
            f.claim("family", family, "webui", f"WebUI {family}", f"WebUI model is {family}")
            break
    return f.detection()


# --- the whole checkpoint -----------------------------------------------------------------------------------------


def yaml_beside(path: str | os.PathLike[str]) -> str:
    """The YAML the WebUI looks for: same folder, same base name, ``.yaml`` (``find_checkpoint_config_near_filename``,
    ``modules/sd_models_config.py`` v1.10.1)."""
    return os.path.splitext(os.fspath(path))[0] + ".yaml"


def detect_checkpoint(
    path: str | os.PathLike[str],
    *,
    yaml_path: str | os.PathLike[str] | None = None,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> Detection:
    """Detect prediction type, ZTSNR and family of the checkpoint at ``path``. Never raises; never writes.

    Reads ``yaml_path`` (or the YAML beside the checkpoint, as the WebUI does), the safetensors header (not for
    pickles: ``.ckpt``/``.pt`` files are never opened), and the file name; resolves them by :data:`SOURCE_PRECEDENCE`.
    A pure function of the files' contents and names: callers may cache it by (path, mtime, size).
    """
    try:
        return _detect_checkpoint(os.fspath(path), yaml_path, max_header_bytes)
    except Exception as e:  # a last resort: detection must never break generation
        logger.exception("[VPred] checkpoint detection failed for %r", path)
        msg = f"detection failed ({type(e).__name__}: {e})"
        return Detection(reasons=(msg,), warnings=(msg,), problems=(msg,))


def _detect_checkpoint(path: str, yaml_path: str | os.PathLike[str] | None, max_header_bytes: int) -> Detection:
    f = _Findings()
    name = os.path.basename(path)
    if yaml_path is not None:
        candidate = os.fspath(yaml_path)
        if os.path.lexists(candidate):
            _yaml_file_findings(candidate, f)
        else:
            f.problem(f"YAML {candidate} not found")
    else:
        candidate = yaml_beside(path)
        if os.path.lexists(candidate):
            _yaml_file_findings(candidate, f)
        else:
            f.note(f"no YAML beside the checkpoint ({os.path.basename(candidate)})")

    ext = os.path.splitext(name)[1].lower()
    if ext in PICKLE_EXTENSIONS:
        f.note(f"{name}: a pickle ({ext}) is never opened; only the YAML and the file name are used")
    else:
        try:
            header = read_safetensors_header(path, max_header_bytes)
        except HeaderError as e:
            if not os.path.lexists(path):
                f.problem(f"checkpoint {name} not found")
            else:
                f.problem(f"{name}: safetensors header unreadable: {e}")
        else:
            f.note(f"read safetensors header of {name}: {len(header)} entries")
            _header_findings(header, f)
    _filename_findings(name, f)
    return f.detection()
