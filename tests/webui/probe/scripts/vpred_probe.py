"""vpred-probe: a test-only WebUI extension that records what the sampler did in the last generation (Forge, reForge).

Installed by ``tools/host.py start forge`` beside sd-webui-vpred (``--no-probe`` leaves it out). It never changes a
result: it wraps Forge's ``backend.sampling.sampling_function.sampling_function_inner`` (every UNet evaluation of a
sampler step and the CFG combine go through it, called from ``sampling_function``) with a function that calls the
original with the same arguments, always with ``return_full=True`` (which only makes the original also return the
``cond_pred`` / ``uncond_pred`` it computes anyway), records copies, and returns exactly what the original returned
for the caller's ``return_full``. No extra model call, no RNG use, nothing written back.

Per model call it records: the sigma the sampler passed, the timestep the UNet received (``predictor.timestep(sigma)``,
what ``KModel.apply_model`` computes), ``cond_scale``, which CFG hooks ``model_options`` held; and, for the chosen
calls (default: the first), the tensors to recompute CFG independently: ``x`` (input), ``cond_pred`` and
``uncond_pred`` (denoised predictions before any CFG function) and ``result`` (after ``sampler_cfg_function`` and
every ``sampler_post_cfg_function``). Per generation it records the predictor's sigma table before (``process``),
during (at the first model call) and after (``postprocess``) it.

HTTP (added with ``script_callbacks.on_app_started``):

- ``GET  /vpred-probe/v1/last``   the last generation's record (JSON, below);
- ``POST /vpred-probe/v1/reset``  clears it; optional body ``{"capture": [0, 7]}`` (call indices) or
  ``{"capture": "all"}`` chooses which calls' tensors are kept from now on (default ``[0]``).

``last``: ``{"probe": 1, "supported": bool, "host": "forge"|"other", "generations": int (since start),
"capture": [...] | "all", "passes": int, "prediction_type": str | null,
"sigmas_before" / "sigmas_during" / "sigmas_after": table | null, "calls": [call, ...]}``, where
``table = {"n", "min", "max", "first", "last", "sha256"}`` (``sha256`` of the float32 bytes) and
``call = {"index", "pass", "sigma": [per sample], "t": [per sample], "cond_scale", "has_cfg_function",
"post_cfg_functions", "pre_cfg_functions", "has_model_function_wrapper", "tensors": null | {"x", "cond_pred",
"uncond_pred", "result"}}``, each tensor ``{"shape": [...], "dtype": "float32", "b64": little-endian float32}``.

reForge (``"host": "reforge"``): its ComfyUI-derived ``ldm_patched`` backend combines CFG in
``ldm_patched.modules.samplers.cfg_function(model, cond_pred, uncond_pred, cond_scale, x, timestep, model_options,
cond, uncond)``, called once per model call by ``sampling_function`` (which the WebUI's ``CFGDenoiser.forward`` calls,
with ``timestep`` = the sigma) after the UNet evaluations of ``calc_cond_batch`` and any pre-CFG function. The probe
replaces that module global with a function that takes the chosen calls' input tensors (copies, before the call),
calls the original with the same arguments and returns its result unchanged. ``t`` is
``model.model_sampling.timestep(sigma)``, what ``BaseModel._apply_model`` gives the UNet; ``prediction_type`` is read
from the model sampling's class (``"epsilon"``, ``"v_prediction"``, ...). ``sigmas_*`` is reForge's own table
(``p.sd_model.forge_objects.unet.model.model_sampling.sigmas``, the one that maps sigma to the UNet's timestep);
reForge also keeps the A1111-style table that gives the sampler its sigma schedule, recorded as
``wrapper_sigmas_before`` / ``wrapper_sigmas_during`` / ``wrapper_sigmas_after`` (same table format): during, the
k-diffusion wrapper's ``p.sampler.model_wrap.sigmas`` (``"wrapper": "model_wrap.sigmas"``), or for the timestep
samplers (DDIM...), which read ``sd_model.alphas_cumprod`` directly, and before and after,
``sqrt((1 - alphas_cumprod) / alphas_cumprod)`` of ``p.sd_model.alphas_cumprod`` (``"wrapper": "alphas_cumprod"``).

On other hosts (A1111) the probe is a no-op: the route answers ``"supported": false`` and nothing is wrapped.
"""

from __future__ import annotations

import base64
import hashlib
import threading

from modules import script_callbacks, scripts

try:  # Forge's backend
    from backend.sampling import sampling_function as _sf
except ImportError:  # A1111 and others: a no-op
    _sf = None

_ldm = None
if _sf is None:
    try:  # reForge's ldm_patched backend
        from ldm_patched.modules import samplers as _ldm
    except ImportError:
        _ldm = None
    if _ldm is not None and not hasattr(_ldm, "cfg_function"):  # an ldm_patched without the CFG function of reForge
        _ldm = None

HOST = "forge" if _sf is not None else "reforge" if _ldm is not None else "other"

_LOCK = threading.Lock()
_STATE: dict = {"capture": [0], "generations": 0}
_RECORD: dict = {}


def _new_record() -> dict:
    record = {
        "passes": 0,
        "prediction_type": None,
        "sigmas_before": None,
        "sigmas_during": None,
        "sigmas_after": None,
        "calls": [],
    }
    if HOST == "reforge":  # its second, A1111-style table
        record.update(wrapper=None, wrapper_sigmas_before=None, wrapper_sigmas_during=None, wrapper_sigmas_after=None)
    return record


def _tensor(t) -> dict:
    a = t.detach().float().cpu().contiguous()
    return {"shape": list(a.shape), "dtype": "float32", "b64": base64.b64encode(a.numpy().tobytes()).decode()}


def _table(predictor) -> dict | None:
    return _table_of(getattr(predictor, "sigmas", None))


def _table_of(sigmas) -> dict | None:
    if sigmas is None:
        return None
    s = sigmas.detach().float().cpu().contiguous()
    return {
        "n": int(s.numel()),
        "min": float(s.min()),
        "max": float(s.max()),
        "first": float(s[0]),
        "last": float(s[-1]),
        "sha256": hashlib.sha256(s.numpy().tobytes()).hexdigest(),
    }


def _predictor(p):
    try:
        return p.sd_model.forge_objects.unet.model.predictor
    except AttributeError:
        return None


def _wants(index: int) -> bool:
    capture = _STATE["capture"]
    return capture == "all" or index in capture


# the unwrapped original, kept on Forge's module so that a script reload wraps it once, not the previous wrapper
if _sf is not None and not hasattr(_sf, "_vpred_probe_original"):
    _sf._vpred_probe_original = _sf.sampling_function_inner
_original_inner = getattr(_sf, "_vpred_probe_original", None)


def _probe_inner(model, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None, return_full=False):  # noqa: B006 (the original's signature)
    out = _original_inner(model, x, timestep, uncond, cond, cond_scale, model_options, seed, return_full=True)
    try:
        _record_call(model, x, timestep, cond_scale, model_options, out)
    except Exception as e:  # a probe failure must never break a generation
        with _LOCK:
            _RECORD.setdefault("errors", []).append(repr(e))
    return out if return_full else out[0]


def _call_entry(index: int, sigma, t, cond_scale, model_options) -> dict:
    """One model call's record (both hosts): its sigma, the UNet's t, the CFG scale and which CFG hooks were set.
    Called with ``_LOCK`` held (``pass`` is read from the record)."""
    return {
        "index": index,
        "pass": _RECORD.get("passes", 0),
        "sigma": sigma.tolist(),
        "t": t.tolist() if t is not None else None,
        "cond_scale": float(cond_scale),
        "has_cfg_function": "sampler_cfg_function" in model_options,
        "post_cfg_functions": len(model_options.get("sampler_post_cfg_function", [])),
        "pre_cfg_functions": len(model_options.get("sampler_pre_cfg_function", [])),
        "has_model_function_wrapper": "model_function_wrapper" in model_options,
        "tensors": None,
    }


def _record_call(model, x, timestep, cond_scale, model_options, out) -> None:
    import torch

    result, cond_pred, uncond_pred = out
    predictor = getattr(model, "predictor", None)
    with torch.no_grad():
        sigma = timestep.detach().float().cpu().reshape(-1)
        t = predictor.timestep(timestep).detach().float().cpu().reshape(-1) if predictor is not None else None
    with _LOCK:
        calls = _RECORD.setdefault("calls", [])
        index = len(calls)
        if index == 0 and predictor is not None:
            _RECORD["sigmas_during"] = _table(predictor)
        call = _call_entry(index, sigma, t, cond_scale, model_options)
        if _wants(index):
            call["tensors"] = {
                "x": _tensor(x),
                "cond_pred": _tensor(cond_pred),
                "uncond_pred": _tensor(uncond_pred) if uncond_pred is not None else None,
                "result": _tensor(result),
            }
        calls.append(call)


if _sf is not None:
    _sf.sampling_function_inner = _probe_inner


# --- reForge ---------------------------------------------------------------------------------------------------

if _ldm is not None and not hasattr(_ldm, "_vpred_probe_original_cfg"):
    _ldm._vpred_probe_original_cfg = _ldm.cfg_function
_original_cfg = getattr(_ldm, "_vpred_probe_original_cfg", None)


def _reforge_model_sampling(p):
    try:
        return p.sd_model.forge_objects.unet.model.model_sampling
    except AttributeError:
        return None


def _reforge_prediction_type(model_sampling) -> str | None:
    from ldm_patched.modules import model_sampling as ms

    for name, kind in (("edm", "EDM"), ("v_prediction", "V_PREDICTION"), ("const", "CONST"), ("epsilon", "EPS")):
        cls = getattr(ms, kind, None)
        if cls is not None and isinstance(model_sampling, cls):
            return name
    return type(model_sampling).__name__ if model_sampling is not None else None


def _alphas_table(p) -> dict | None:
    """The A1111-style table, from ``p.sd_model.alphas_cumprod`` as the k-diffusion wrapper computes it."""
    import torch

    acp = getattr(getattr(p, "sd_model", None), "alphas_cumprod", None)
    if acp is None:
        return None
    with torch.no_grad():
        return _table_of(((1 - acp) / acp) ** 0.5)


def _wrapper_table(p) -> tuple[str, dict | None]:
    """The table the current pass's sampler takes its sigma schedule from."""
    wrap = getattr(getattr(p, "sampler", None), "model_wrap", None)
    sigmas = getattr(wrap, "sigmas", None)
    if sigmas is not None:
        return "model_wrap.sigmas", _table_of(sigmas)
    return "alphas_cumprod", _alphas_table(p)


def _probe_cfg(model, cond_pred, uncond_pred, cond_scale, x, timestep, model_options={}, cond=None, uncond=None):  # noqa: B006 (the original's signature)
    tensors = None
    try:
        with _LOCK:
            index = len(_RECORD.get("calls", []))
        if _wants(index):  # copies of the inputs, before a CFG function could touch them
            tensors = {
                "x": _tensor(x),
                "cond_pred": _tensor(cond_pred),
                "uncond_pred": _tensor(uncond_pred) if uncond_pred is not None else None,
            }
    except Exception as e:  # a probe failure must never break a generation
        with _LOCK:
            _RECORD.setdefault("errors", []).append(repr(e))
    result = _original_cfg(
        model, cond_pred, uncond_pred, cond_scale, x, timestep, model_options=model_options, cond=cond, uncond=uncond
    )
    try:
        _record_reforge_call(model, timestep, cond_scale, model_options, tensors, result)
    except Exception as e:
        with _LOCK:
            _RECORD.setdefault("errors", []).append(repr(e))
    return result


def _record_reforge_call(model, timestep, cond_scale, model_options, tensors, result) -> None:
    import torch

    model_sampling = getattr(model, "model_sampling", None)
    with torch.no_grad():
        sigma = timestep.detach().float().cpu().reshape(-1)
        t = (
            model_sampling.timestep(timestep).detach().float().cpu().reshape(-1)
            if model_sampling is not None
            else None
        )
    with _LOCK:
        calls = _RECORD.setdefault("calls", [])
        index = len(calls)
        if index == 0:
            if model_sampling is not None:
                _RECORD["sigmas_during"] = _table(model_sampling)
            p = _STATE.get("p")
            if p is not None:
                _RECORD["wrapper"], _RECORD["wrapper_sigmas_during"] = _wrapper_table(p)
        call = _call_entry(index, sigma, t, cond_scale, model_options)
        if tensors is not None:
            call["tensors"] = {**tensors, "result": _tensor(result)}
        calls.append(call)


if _ldm is not None:
    _ldm.cfg_function = _probe_cfg


def _reforge_process(p) -> None:
    model_sampling = _reforge_model_sampling(p)
    with _LOCK:
        _RECORD.clear()
        _RECORD.update(_new_record())
        _STATE["generations"] += 1
        _STATE["p"] = p
        _RECORD["prediction_type"] = _reforge_prediction_type(model_sampling)
        _RECORD["sigmas_before"] = _table(model_sampling) if model_sampling is not None else None
        _RECORD["wrapper_sigmas_before"] = _alphas_table(p)


def _reforge_postprocess(p) -> None:
    model_sampling = _reforge_model_sampling(p)
    with _LOCK:
        _STATE.pop("p", None)
        _RECORD["sigmas_after"] = _table(model_sampling) if model_sampling is not None else None
        _RECORD["wrapper_sigmas_after"] = _alphas_table(p)


class VPredProbe(scripts.Script):
    """Marks generation boundaries and reads the sigma table around them; no UI, no arguments."""

    def title(self):
        return "vpred probe"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return []

    def process(self, p, *args):
        if _ldm is not None:
            _reforge_process(p)
            return
        if _sf is None:
            return
        predictor = _predictor(p)
        with _LOCK:
            _RECORD.clear()
            _RECORD.update(_new_record())
            _STATE["generations"] += 1
            _RECORD["prediction_type"] = getattr(predictor, "prediction_type", None)
            _RECORD["sigmas_before"] = _table(predictor) if predictor is not None else None

    def process_before_every_sampling(self, p, *args, **kwargs):
        if _sf is None and _ldm is None:
            return
        with _LOCK:
            _RECORD["passes"] = _RECORD.get("passes", 0) + 1

    def postprocess(self, p, processed, *args):
        if _ldm is not None:
            _reforge_postprocess(p)
            return
        if _sf is None:
            return
        predictor = _predictor(p)
        with _LOCK:
            _RECORD["sigmas_after"] = _table(predictor) if predictor is not None else None


def _last() -> dict:
    with _LOCK:
        record = dict(_RECORD) if _RECORD else _new_record()
        record["calls"] = list(record.get("calls", []))
        return {
            "probe": 1,
            "supported": HOST != "other",
            "host": HOST,
            "generations": _STATE["generations"],
            "capture": _STATE["capture"],
            **record,
        }


def _on_app_started(_demo, app) -> None:
    from fastapi import Body

    def last():
        return _last()

    def reset(body: dict | None = Body(default=None)):  # noqa: B008 (FastAPI's idiom)
        capture = (body or {}).get("capture", [0])
        if capture != "all":
            capture = [int(i) for i in capture]
        with _LOCK:
            _RECORD.clear()
            _STATE["capture"] = capture
        return _last()

    app.add_api_route("/vpred-probe/v1/last", last, methods=["GET"])
    app.add_api_route("/vpred-probe/v1/reset", reset, methods=["POST"])


script_callbacks.on_app_started(_on_app_started)
