"""Schedule preview: the sigmas and timesteps the next generation will use, as a compact HTML table.

Pure (standard library and torch, plus the project's own pure modules): the WebUI glue (``lib_vpred.webui.ui``) picks
the sigma table, the schedule function and the step counts; this module reproduces what the WebUI's k-diffusion
sampler does with them (``KDiffusionSampler.get_sigmas`` and ``sample_img2img`` in v1.10.1) and describes the result.

- ``schedule_sigmas``: the full sigma list of one pass (trailing, or the selected schedule type called as the WebUI
  calls it), with the WebUI's "discard penultimate sigma" handling;
- ``img2img_steps``: the WebUI's ``setup_img2img_steps`` (strength -> virtual steps and ``t_enc``);
- ``build_preview``: slices the list for img2img / hires (``sigmas[steps - t_enc - 1:]``), maps every sigma back to
  a fractional timestep, counts the steps spent above the stock sigma_max and at t >= 900, and warns when a schedule
  type wastes steps under zero terminal SNR.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Callable
from typing import Any

import torch

from lib_vpred import schedule
from lib_vpred.plan import IGNORES_TABLE, schedule_type_loses_detail

#: The stock SD sigma_max (t = 999 of the scaled-linear schedule) is 14.6146: sigmas above it are noise levels a
#: model trained without zero terminal SNR never saw, and that carry almost no image information under ZTSNR.
#: Counted strictly above 14.615 (so a stock schedule's first step does not count), shown as "14.6".
STOCK_SIGMA_MAX = 14.615
STOCK_SIGMA_LABEL = "14.6"
#: Timesteps from here up are the "pure noise" end of the schedule (peers.md section 10 counts steps with t >= 900).
NOISY_T = 900
#: How many leading entries the compact table shows before "..." and the last step.
HEAD = 6

ScheduleFn = Callable[..., torch.Tensor]


# --- sigma <-> timestep -----------------------------------------------------------------------------------------------


def sigma_to_t(sigmas: torch.Tensor, model_sigmas: torch.Tensor) -> torch.Tensor:
    """Fractional timesteps of ``sigmas`` in a model's ascending sigma table (index = timestep).

    Log-sigma interpolation between the two neighbouring table entries, clamped to [0, T-1]: the same mapping as
    k-diffusion's ``DiscreteSchedule.sigma_to_t(quantize=False)``, which the denoiser applies before every model call.
    A sigma of 0 (the end of a schedule) maps to t = 0. Computed in float64; returns float64 on the CPU.
    """
    table = model_sigmas.detach().to("cpu", torch.float64)
    log_table = table.log()
    s = sigmas.detach().to("cpu", torch.float64).reshape(-1)
    out = torch.zeros_like(s)
    last = table.shape[0] - 1
    for i, value in enumerate(s.tolist()):
        if value <= 0:
            continue
        log_s = math.log(value)
        # number of table entries at or below log_s, minus one: the lower neighbour
        low = int((log_table <= log_s).sum().item()) - 1
        low = min(max(low, 0), last - 1)
        lo, hi = float(log_table[low]), float(log_table[low + 1])
        w = (lo - log_s) / (lo - hi) if hi != lo else 0.0
        w = min(max(w, 0.0), 1.0)
        out[i] = (1 - w) * low + w * (low + 1)
    return out.reshape(sigmas.shape)


def uniform_sigmas(model_sigmas: torch.Tensor, n: int) -> torch.Tensor:
    """The WebUI's fallback schedule (no schedule function): ``DiscreteSchedule.get_sigmas(n)``, i.e. ``n`` timesteps
    ``linspace(T-1, 0, n)``, log-sigma interpolated, then 0. Float64 on the CPU."""
    table = model_sigmas.detach().to("cpu", torch.float64)
    log_table = table.log()
    t = torch.linspace(table.shape[0] - 1, 0, n, dtype=torch.float64)
    low, high, w = t.floor().long(), t.ceil().long(), t.frac()
    sig = ((1 - w) * log_table[low] + w * log_table[high]).exp()
    return torch.cat([sig, sig.new_zeros(1)])


# --- what the WebUI does with a schedule ------------------------------------------------------------------------------


def schedule_sigmas(
    model_sigmas: torch.Tensor,
    steps: int,
    *,
    spacing: str | None = None,
    schedule_fn: ScheduleFn | None = None,
    need_inner_model: bool = False,
    inner_model: Any = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    extra_kwargs: dict[str, Any] | None = None,
    discard_penultimate: bool = False,
) -> torch.Tensor:
    """The full sigma list of one pass, as ``KDiffusionSampler.get_sigmas(p, steps)`` builds it (``steps + 1`` entries,
    descending, ending in 0).

    - ``spacing`` (``"trailing"`` or ``"exponential"``): our override (``p.sampler_noise_scheduler_override``),
      :func:`lib_vpred.schedule.spacing_sigmas` of ``model_sigmas``;
    - else ``schedule_fn`` called as the WebUI calls it: ``fn(n=, sigma_min=, sigma_max=, [inner_model=], device=cpu)``
      (``sigma_min``/``sigma_max`` default to the table's ends);
    - ``schedule_fn`` None: ``inner_model.get_sigmas(n)`` (or :func:`uniform_sigmas` without an inner model).

    With ``discard_penultimate`` the list is built for ``steps + 1`` and its smallest non-zero sigma dropped.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    n = steps + 1 if discard_penultimate else steps
    if spacing:
        sigmas = schedule.spacing_sigmas(spacing, model_sigmas.detach().cpu(), n)
    elif schedule_fn is None:
        sigmas = inner_model.get_sigmas(n) if inner_model is not None else uniform_sigmas(model_sigmas, n)
    else:
        kwargs: dict[str, Any] = {
            "sigma_min": float(model_sigmas[0]) if sigma_min is None else sigma_min,
            "sigma_max": float(model_sigmas[-1]) if sigma_max is None else sigma_max,
        }
        kwargs.update(extra_kwargs or {})
        if need_inner_model:
            if inner_model is None:
                raise ValueError("this schedule function needs an inner_model (a k-diffusion DiscreteSchedule)")
            kwargs["inner_model"] = inner_model
        sigmas = schedule_fn(n=n, **kwargs, device=torch.device("cpu"))
    sigmas = sigmas.detach().to("cpu", torch.float64)
    if discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


def img2img_steps(steps: int, denoising_strength: float, *, fixed: bool) -> tuple[int, int]:
    """``sd_samplers_common.setup_img2img_steps``: (virtual steps of the full schedule, ``t_enc``).

    ``fixed`` (hires passes, or the ``img2img_fix_steps`` option): ``int(steps / min(s, 0.999))`` virtual steps and
    ``t_enc = steps - 1``; otherwise ``steps`` virtual steps and ``t_enc = int(min(s, 0.999) * steps)``. The sampler
    then runs ``t_enc + 1`` steps from index ``virtual - t_enc - 1`` of the full list.
    """
    s = float(denoising_strength)
    if fixed:
        virtual = int(steps / min(s, 0.999)) if s > 0 else 0
        return virtual, steps - 1
    return steps, int(min(s, 0.999) * steps)


# --- the preview ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preview:
    """One pass's schedule as the sampler will run it."""

    #: The sigmas the sampler gets (the img2img slice for img2img/hires), descending, ending in 0.
    sigmas: tuple[float, ...]
    #: Fractional timestep of every entry of ``sigmas`` in the sigma table used (the last, sigma 0, maps to 0).
    timesteps: tuple[float, ...]
    #: Steps of the full (virtual) schedule, and the index where the slice starts (0 for txt2img).
    virtual_steps: int
    start_index: int = 0
    denoising_strength: float | None = None
    above_stock: int = 0
    noisy: int = 0
    warnings: tuple[str, ...] = ()
    label: str = ""

    @property
    def steps(self) -> int:
        """Sampling steps actually run."""
        return len(self.sigmas) - 1

    @property
    def start_sigma(self) -> float:
        return self.sigmas[0]

    @property
    def start_t(self) -> float:
        return self.timesteps[0]

    def summary(self) -> str:
        """One line, e.g. ``20 steps, first at t=999 (sigma 4518.8); 3 steps above sigma 14.6, 2 at t >= 900``."""
        if self.steps <= 0:
            return f"{self.label}no sampling steps"
        plural = "s" if self.steps != 1 else ""
        if self.denoising_strength is None:
            head = f"{self.steps} step{plural}, first at t={format_t(self.start_t)} (sigma {format_sigma(self.start_sigma)})"
        else:
            head = (
                f"strength {self.denoising_strength:g}: {self.steps} step{plural} of {article(self.virtual_steps)} "
                f"{self.virtual_steps}-step "
                f"schedule, starting at t={format_t(self.start_t)} (sigma {format_sigma(self.start_sigma)})"
            )
        above = f"{self.above_stock} step{'s' if self.above_stock != 1 else ''} above sigma {STOCK_SIGMA_LABEL}"
        return f"{self.label}{head}; {above}, {self.noisy} at t >= {NOISY_T}"

    def rows(self, head: int = HEAD) -> list[tuple[str, str, str]]:
        """(step number, sigma, t) of the steps run: the first ``head``, ``...``, the last step (sigma 0 omitted)."""
        count = self.steps
        indices = list(range(count)) if count <= head + 2 else [*range(head), None, count - 1]
        out = []
        for i in indices:
            if i is None:
                out.append(("…", "…", "…"))
            else:
                out.append((str(i + 1), format_sigma(self.sigmas[i]), format_t(self.timesteps[i])))
        return out

    def html(self, head: int = HEAD) -> str:
        """A compact horizontal table (step / sigma / t rows), the summary and the warnings."""
        rows = self.rows(head)
        parts = ["<div class='vpred-preview-pass'>"]
        parts.append(f"<p class='vpred-preview-summary'>{html.escape(self.summary())}</p>")
        if rows:
            parts.append("<table class='vpred-preview-table'>")
            for title, column in (("step", 0), ("sigma", 1), ("t", 2)):
                cells = "".join(f"<td>{html.escape(row[column])}</td>" for row in rows)
                parts.append(f"<tr><th>{title}</th>{cells}</tr>")
            parts.append("</table>")
        for warning in self.warnings:
            parts.append(f"<p class='vpred-preview-warning'>⚠ {html.escape(warning)}</p>")
        parts.append("</div>")
        return "".join(parts)


def format_sigma(value: float) -> str:
    """4518.8, 145.7, 40.4, 2.02, 0.0292; 0 for the end of the schedule."""
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}"


def format_t(value: float) -> str:
    """Timesteps as whole numbers (998), as the model is called with them (rounded; 997.7 -> 998)."""
    return str(round(value))


def article(number: int) -> str:
    """``a`` or ``an`` before a number said in English ("an 8-step", "an 11-step", "an 18-step", "a 20-step")."""
    text = str(number)
    if text.startswith("8") or text in ("11", "18") or (len(text) == 5 and text[:2] in ("11", "18")):
        return "an"
    return "a"


def schedule_warnings(
    preview: Preview, *, ztsnr: bool, overridden: bool, scheduler_label: str | None, sampler_name: str | None = None
) -> tuple[str, ...]:
    """Warnings about a schedule type under zero terminal SNR, each with the fix. Which schedule type warns with which
    sampler is :func:`lib_vpred.plan.schedule_type_loses_detail` (the plan's rule); ``sampler_name`` None means a
    sampler outside the DPM++ family. ``overridden``: our spacing replaces the schedule type (no warning)."""
    if not ztsnr or overridden or not scheduler_label:
        return ()
    out = []
    too_high = preview.denoising_strength is not None and preview.start_t - preview.denoising_strength * 1000 > 100
    if schedule_type_loses_detail(scheduler_label, sampler_name) and (preview.above_stock > 0 or too_high):
        where = f"{preview.above_stock} of {preview.steps} steps above sigma {STOCK_SIGMA_LABEL}"
        text = f"{scheduler_label} spends {where} under ZTSNR"
        if too_high:
            text += (
                f", and strength {preview.denoising_strength:g} starts at t={format_t(preview.start_t)} "
                "(almost a full re-noise)"
            )
        out.append(text + ": set Timestep spacing to Auto, or Schedule type to Simple, SGM Uniform or Trailing")
    elif scheduler_label in IGNORES_TABLE:
        out.append(
            f"{scheduler_label} uses fixed sigmas that ignore the ZTSNR table (no step at t=999): "
            "set Timestep spacing to Auto"
        )
    return tuple(out)


def preview_from_timesteps(
    model_sigmas: torch.Tensor,
    timesteps: list[int],
    *,
    virtual_steps: int,
    denoising_strength: float | None = None,
    label: str = "",
) -> Preview:
    """A timestep sampler's pass (DDIM, PLMS, UniPC): the model calls at ``timesteps`` (descending), each shown with
    the sigma of that timestep in ``model_sigmas``; the pass ends at t = 0."""
    table = model_sigmas.detach().to("cpu", torch.float64)
    last = table.shape[0] - 1
    ts = [min(max(int(t), 0), last) for t in timesteps]
    sigmas = [float(table[t]) for t in ts]
    return Preview(
        sigmas=(*sigmas, 0.0),
        timesteps=(*[float(t) for t in ts], 0.0),
        virtual_steps=virtual_steps,
        denoising_strength=denoising_strength,
        above_stock=sum(1 for s in sigmas if s > STOCK_SIGMA_MAX),
        noisy=sum(1 for t in ts if t >= NOISY_T),
        label=label,
    )


def build_preview(
    model_sigmas: torch.Tensor,
    steps: int,
    *,
    spacing: str | None = None,
    schedule_fn: ScheduleFn | None = None,
    need_inner_model: bool = False,
    inner_model: Any = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    extra_kwargs: dict[str, Any] | None = None,
    discard_penultimate: bool = False,
    denoising_strength: float | None = None,
    fixed_steps: bool = False,
    ztsnr: bool = False,
    scheduler_label: str | None = None,
    sampler_name: str | None = None,
    label: str = "",
) -> Preview:
    """The schedule one pass will run, with its summary counts and warnings.

    ``model_sigmas`` is the sigma table the sampler uses (stock, or ZTSNR from ``lib_vpred.schedule``), ascending,
    index = timestep. ``denoising_strength`` set means an img2img or hires pass (``fixed_steps`` for hires or the
    ``img2img_fix_steps`` option): the full schedule is built for the virtual step count and sliced as the WebUI does.
    """
    virtual, start = steps, 0
    if denoising_strength is not None:
        virtual, t_enc = img2img_steps(steps, denoising_strength, fixed=fixed_steps)
        if virtual < 1:
            return Preview(
                sigmas=(0.0,), timesteps=(0.0,), virtual_steps=0, denoising_strength=denoising_strength, label=label
            )
        start = virtual - t_enc - 1
    full = schedule_sigmas(
        model_sigmas,
        virtual,
        spacing=spacing,
        schedule_fn=schedule_fn,
        need_inner_model=need_inner_model,
        inner_model=inner_model,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        extra_kwargs=extra_kwargs,
        discard_penultimate=discard_penultimate,
    )
    run = full[start:]
    ts = sigma_to_t(run, model_sigmas)
    stepping = run[:-1]
    preview = Preview(
        sigmas=tuple(float(s) for s in run),
        timesteps=tuple(float(t) for t in ts),
        virtual_steps=virtual,
        start_index=start,
        denoising_strength=denoising_strength,
        above_stock=int((stepping > STOCK_SIGMA_MAX).sum()),
        noisy=int((ts[:-1] >= NOISY_T - 1e-6).sum()),
        label=label,
    )
    warnings = schedule_warnings(
        preview,
        ztsnr=ztsnr,
        overridden=bool(spacing),
        scheduler_label=scheduler_label,
        sampler_name=sampler_name,
    )
    return dataclasses.replace(preview, warnings=warnings)
