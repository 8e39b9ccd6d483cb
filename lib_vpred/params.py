"""The extension's parameters: one table drives the UI, the infotext, the HTTP API, the schema endpoint and XYZ.

The order of :data:`PARAMS` is a wire format: positional API ``args`` follow it. **Append only; never reorder.**
Everything here is pure (standard library only) so that it can be tested without the WebUI.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

#: Infotext keys written by older or other extensions that mean our CFG rescale phi (read, never written).
#: "CFG Rescale": Seshelle/CFG_Rescale_webui; "CFG Rescale phi": ljleb/sd-webui-neutral-prompt. Both rescaled in
#: x0 space, so pasting them gives a similar, not identical, image.
LEGACY_CFG_RESCALE_KEYS: tuple[str, ...] = ("CFG Rescale", "CFG Rescale phi")

#: Suffix that marks an infotext value decided automatically (``Auto``), e.g. ``"v-prediction (auto)"``.
AUTO_SUFFIX = " (auto)"


class ParamError(ValueError):
    """A parameter value was rejected; ``field`` names it and the message says what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter: its API/attribute ``name``, Python ``kind``, ``default``, allowed values and its labels."""

    name: str
    kind: type
    default: Any
    label: str
    infotext_key: str | None
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None

    def allowed(self) -> str:
        """Human-readable description of the allowed values, used in every error message."""
        if self.kind is bool:
            return "true or false"
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        return f"a number from {self.minimum:g} to {self.maximum:g}"

    def validate(self, value: Any) -> Any:
        """Return ``value`` normalised to this parameter's type, or raise :class:`ParamError` naming the field."""
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            raise ParamError(self.name, f"expected {self.allowed()}, got {value!r} ({type(value).__name__})")
        if self.choices:
            if isinstance(value, str):
                for choice in self.choices:
                    if value.strip().lower() == choice.lower():
                        return choice
            raise ParamError(self.name, f"expected {self.allowed()}, got {value!r}")
        # a float parameter
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamError(self.name, f"expected {self.allowed()}, got {value!r} ({type(value).__name__})")
        number = float(value)
        if not math.isfinite(number) or not self.minimum <= number <= self.maximum:
            raise ParamError(self.name, f"expected {self.allowed()}, got {value!r}")
        return number

    def to_schema(self) -> dict[str, Any]:
        """JSON-able description of this parameter (for ``GET /vpred/v1/schema`` and the README)."""
        out: dict[str, Any] = {
            "name": self.name,
            "type": {bool: "boolean", str: "string", float: "number"}[self.kind],
            "default": self.default,
            "label": self.label,
            "infotext_key": self.infotext_key,
            "help": self.help,
        }
        if self.choices:
            out["choices"] = list(self.choices)
        if self.minimum is not None:
            out.update(minimum=self.minimum, maximum=self.maximum, step=self.step)
        return out


PREDICTION_CHOICES = ("Auto", "v-prediction", "eps")
ZTSNR_CHOICES = ("Auto", "On", "Off")
#: "Auto" came after "Trailing" and "Schedule type" (values are matched by name, so the order here is display only).
SPACING_CHOICES = ("Auto", "Trailing", "Schedule type")

#: The parameter table. ORDER IS THE POSITIONAL API FORMAT: append new parameters at the end, never reorder.
PARAMS: tuple[Param, ...] = (
    Param(
        "enabled",
        bool,
        True,
        "Enable",
        "VPred",
        "Turn the extension on or off. On, it changes only v-prediction checkpoints; eps checkpoints are left exactly "
        "as they are. Folding the panel away does not turn it off.",
    ),
    Param(
        "prediction",
        str,
        "Auto",
        "Prediction type",
        "VPred prediction",
        "Leave at Auto: the checkpoint's YAML file, keys and metadata tell. Pick v-prediction or eps only when a "
        "checkpoint is detected wrongly (its images come out grey, noisy or burnt).",
        choices=PREDICTION_CHOICES,
    ),
    Param(
        "ztsnr",
        str,
        "Auto",
        "Zero terminal SNR",
        "VPred ZTSNR",
        "Leave at Auto: on for v-prediction checkpoints trained for it (SD1 ones such as fluffyrock), off for SD2 768-v. "
        "Pick On when a checkpoint's model card says 'zero terminal SNR' but the status does not; Off to compare.",
        choices=ZTSNR_CHOICES,
    ),
    Param(
        "spacing",
        str,
        "Auto",
        "Timestep spacing",
        "VPred spacing",
        "Auto (recommended): the first step starts from pure noise, so very dark and very bright images work; the "
        "steps then follow what measured best for the sampler (trailing, or for DPM++ 2M and LMS log-even down to the "
        "smallest noise). Trailing: trailing steps with every sampler. Schedule type: the WebUI's Schedule type decides.",
        choices=SPACING_CHOICES,
    ),
    Param(
        "cfg_rescale",
        float,
        0.7,
        "CFG rescale φ",
        "VPred CFG rescale",
        "Tames the burnt, over-saturated look of high CFG scales on v-prediction checkpoints. 0.7 suits CFG 7; "
        "lower it (0.2-0.4) if colours look washed out; 0 turns it off.",
        minimum=0.0,
        maximum=1.0,
        step=0.05,
    ),
)

PARAMS_BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}
#: The hires pass's resolved spacing, written only when it differs from the first pass's ``VPred spacing`` (``Auto``
#: gives img2img and hires passes trailing). Informational: pasting restores the spacing control from ``VPred spacing``.
HIRES_SPACING_KEY = "VPred hires spacing"
#: Every infotext key this extension writes.
INFOTEXT_KEYS: frozenset[str] = frozenset(p.infotext_key for p in PARAMS if p.infotext_key) | {HIRES_SPACING_KEY}


@dataclasses.dataclass(frozen=True)
class VPredParams:
    """One generation's settings, validated. Field names equal :data:`PARAMS` names."""

    enabled: bool = True
    prediction: str = "Auto"
    ztsnr: str = "Auto"
    spacing: str = "Auto"
    cfg_rescale: float = 0.7

    def __post_init__(self) -> None:
        # Validate and normalise every field, however the object was built (e.g. "on" -> "On", 1 -> 1.0).
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _param(field.name).validate(getattr(self, field.name)))

    def replace(self, **changes: Any) -> VPredParams:
        """A copy with ``changes`` validated and applied."""
        for key in changes:
            _param(key)  # unknown fields are a ParamError naming them, not a TypeError
        return dataclasses.replace(self, **changes)


def _param(name: str) -> Param:
    try:
        return PARAMS_BY_NAME[name]
    except KeyError:
        raise ParamError(name, f"unknown field; known fields are {', '.join(PARAMS_BY_NAME)}") from None


def defaults() -> VPredParams:
    """The defaults of every parameter (what the UI shows and what an API call without our args gets)."""
    return VPredParams(**{p.name: p.default for p in PARAMS})


def from_dict(data: Mapping[str, Any], base: VPredParams | None = None) -> VPredParams:
    """Named fields (a partial dict is fine: missing fields keep ``base`` or the defaults). Unknown fields are errors."""
    if not isinstance(data, Mapping):
        raise ParamError("args", f"expected a JSON object of named fields, got {type(data).__name__}")
    base = base or defaults()
    for key in data:
        if not isinstance(key, str):
            raise ParamError(str(key), "field names must be strings")
        _param(key)
    return base.replace(**dict(data))


def from_args(args: Sequence[Any]) -> VPredParams:
    """Parse a script's args: either positional values in :data:`PARAMS` order, or a dict of named fields first.

    Fewer positional values than parameters is fine (the rest take defaults); more is an error. When the first value
    is a dict, the values after it are ignored: the WebUI's API copies ``alwayson_scripts`` args over the UI defaults,
    so ``{"args": [{"cfg_rescale": 0.5}]}`` reaches the script as ``({...}, <default>, <default>, ...)``.
    """
    if args and isinstance(args[0], Mapping):
        return from_dict(args[0])
    if len(args) > len(PARAMS):
        raise ParamError(
            "args",
            f"expected at most {len(PARAMS)} positional values ({', '.join(PARAMS_BY_NAME)}) or one object, got {len(args)}",
        )
    return defaults().replace(**{p.name: v for p, v in zip(PARAMS, args, strict=False)})


def to_args(params: VPredParams) -> list[Any]:
    """Positional form of ``params``, in :data:`PARAMS` order."""
    return [getattr(params, p.name) for p in PARAMS]


def schema() -> dict[str, Any]:
    """JSON-able schema of every parameter, in positional order."""
    return {"params": [p.to_schema() for p in PARAMS], "positional_order": [p.name for p in PARAMS]}


# --- infotext ---------------------------------------------------------------------------------------------------------


def format_infotext_value(value: str, auto: bool) -> str:
    """An effective value as written to the infotext, marked ``(auto)`` when it was decided automatically."""
    return f"{value}{AUTO_SUFFIX}" if auto else value


_INFOTEXT_TO_CHOICE: dict[str, dict[str, str]] = {
    "prediction": {"v-prediction": "v-prediction", "v": "v-prediction", "eps": "eps", "epsilon": "eps"},
    "ztsnr": {"on": "On", "off": "Off", "true": "On", "false": "Off", "built-in": "Auto"},
    # "<resolved> (auto)" (e.g. "exponential (auto)") restores Auto, like the other fields.
    "spacing": {"trailing": "Trailing", "schedule type": "Schedule type"},
}


def parse_infotext(params: Mapping[str, str]) -> dict[str, Any]:
    """Control values from a parsed infotext dict (``{"VPred ZTSNR": "on (auto)", ...}``).

    Returns only the fields found; ``(auto)`` values restore ``Auto``. Our own keys win over the legacy CFG rescale
    keys of other extensions. Unparseable values are skipped, never raised.
    """
    out: dict[str, Any] = {}
    master = params.get(PARAMS_BY_NAME["enabled"].infotext_key)
    if master is not None and str(master).strip().lower() in ("disabled", "off", "false"):
        return {"enabled": False}
    for field in ("prediction", "ztsnr", "spacing"):
        raw = params.get(PARAMS_BY_NAME[field].infotext_key)
        if raw is None:
            continue
        text = str(raw).strip()
        if text.lower().endswith(AUTO_SUFFIX.strip()):
            out[field] = "Auto" if "Auto" in PARAMS_BY_NAME[field].choices else None
        else:
            out[field] = _INFOTEXT_TO_CHOICE[field].get(text.lower())
        if out[field] is None:
            del out[field]
    for key in (PARAMS_BY_NAME["cfg_rescale"].infotext_key, *LEGACY_CFG_RESCALE_KEYS):
        if key in params:
            phi = _parse_float(params[key])
            if phi is not None:
                try:
                    out["cfg_rescale"] = PARAMS_BY_NAME["cfg_rescale"].validate(phi)
                    break
                except ParamError:
                    continue
    if out:
        out["enabled"] = True
    return out


def _parse_float(raw: Any) -> float | None:
    match = re.fullmatch(r"\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*", str(raw))
    return float(match.group(1)) if match else None


# --- per-checkpoint overrides (Settings) ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CheckpointOverride:
    """One Settings rule: checkpoints matching ``pattern`` are treated as ``prediction`` / ``ztsnr``."""

    pattern: str
    prediction: str | None = None  # "v" or "eps"
    ztsnr: bool | None = None

    def matches(self, *names: str | None) -> bool:
        import fnmatch

        pattern = self.pattern.lower()
        return any(name and fnmatch.fnmatchcase(name.lower(), pattern) for name in names)


_OVERRIDE_VALUES = {
    "prediction": {"v": "v", "v-prediction": "v", "vpred": "v", "eps": "eps", "epsilon": "eps"},
    "ztsnr": {"on": True, "true": True, "yes": True, "off": False, "false": False, "no": False},
}


def parse_checkpoint_overrides(text: str) -> tuple[list[CheckpointOverride], list[str]]:
    """Parse the per-checkpoint override setting: one rule per line, ``<name, glob or hash>: key=value, ...``.

    Keys: ``prediction`` (v / eps) and ``ztsnr`` (on / off). ``#`` starts a comment. Returns the rules and a message
    per line that could not be used (never raises), e.g.
    ``fluffyrock-*: prediction=v, ztsnr=on`` or ``a1b2c3d4e5: ztsnr=off``.
    """
    rules: list[CheckpointOverride] = []
    problems: list[str] = []
    for number, raw in enumerate((text or "").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        pattern, sep, rest = line.rpartition(":")
        pattern = pattern.strip()
        if not sep or not pattern:
            problems.append(f"line {number}: expected '<checkpoint>: prediction=v, ztsnr=on', got {raw.strip()!r}")
            continue
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in rest.split(","))):
            key, eq, value = (s.strip().lower() for s in item.partition("="))
            if not eq or key not in _OVERRIDE_VALUES or value not in _OVERRIDE_VALUES[key]:
                problems.append(f"line {number}: {item!r} is not one of prediction=v|eps, ztsnr=on|off")
                break
            values[key] = _OVERRIDE_VALUES[key][value]
        else:
            if values:
                rules.append(CheckpointOverride(pattern, values.get("prediction"), values.get("ztsnr")))
            else:
                problems.append(f"line {number}: no prediction= or ztsnr= given")
    return rules, problems


def find_checkpoint_override(rules: Sequence[CheckpointOverride], *names: str | None) -> CheckpointOverride | None:
    """The first rule matching any of ``names`` (file name, model name, title, short hash, sha256)."""
    return next((rule for rule in rules if rule.matches(*names)), None)
