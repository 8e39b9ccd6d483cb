"""Timestep-sampler maths (DDIM, DDIM CFG++, PLMS, UniPC) for v-prediction and zero terminal SNR. Pure: stdlib + torch.

Lin, Liu, Li, Yang, "Common Diffusion Noise Schedules and Sample Steps are Flawed", arXiv 2305.08891 (WACV 2024).

Why this module exists (paper Sec. 6): with a zero-terminal-SNR schedule alpha-bar_T is ~0 (4.9e-8 after the usual
clamp, exactly 0 without it), and the eps route ``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)`` divides by ~0: in
float32 it keeps only ~3-4 significant digits of x0 at t = 999, and it is 0/0 when abar_T = 0. A v-prediction model
does not need that route: ``x0 = sqrt(abar) x_t - sqrt(1 - abar) v`` (Eq. 19) and ``eps = sqrt(abar) v +
sqrt(1 - abar) x_t`` (Eq. 17) have no division, and the deterministic DDIM step is Eq. 21
``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps``. The loops below take a model function that returns **v**
and never divide by sqrt(abar).

Timestep lists follow the WebUI's conventions (``modules/sd_samplers_timesteps*.py``, v1.10.1): lists are
**ascending**; DDIM / DDIM CFG++ / PLMS loop from the last entry down to index 1, stepping ``ts[i] -> ts[i - 1]``
(``len - 1`` iterations; PLMS makes one extra model call in its first iteration); UniPC only uses the list's length
(and, for img2img, its last entry as the start time) and spaces its own steps in continuous time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from lib_vpred.schedule import NUM_TRAIN_TIMESTEPS, spaced_timesteps

DDIM = "ddim"
DDIM_CFGPP = "ddim_cfgpp"
PLMS = "plms"
UNIPC = "unipc"
KINDS = (DDIM, DDIM_CFGPP, PLMS, UNIPC)

#: WebUI sampler labels -> kind (``samplers_timesteps`` in sd_samplers_timesteps.py).
LABELS = {"DDIM": DDIM, "DDIM CFG++": DDIM_CFGPP, "PLMS": PLMS, "UniPC": UNIPC}

#: ``model(x, t) -> (v_guided, v_direction)``: the guided v at integer timestep t, and the v whose eps gives the DDIM
#: direction (the same tensor for DDIM; the unconditional v for DDIM CFG++).
VModel = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]


def kind_of(name: Any) -> str | None:
    """The kind for a WebUI sampler label ("DDIM CFG++") or impl function name ("ddim_cfgpp"), else None."""
    if name in LABELS:
        return LABELS[name]
    text = getattr(name, "__name__", name)
    return text if text in KINDS else None


# --- timestep lists ---------------------------------------------------------------------------------------------------


def trailing_timesteps(steps: int, kind: str, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """The ascending timestep list that makes the WebUI's ``kind`` loop sample "trailing" (Table 2) in ``steps`` calls.

    - DDIM, DDIM CFG++: ``[0] + trailing(steps)``, e.g. 20 steps -> ``[0, 49, 99, ..., 949, 999]`` (21 entries): the
      loop makes ``len - 1 = steps`` model calls at 999, 949, ..., 49 and its last step lands on t = 0.
    - PLMS: ``[0] + trailing(steps - 1)`` (``steps`` entries): its first iteration calls the model twice (pseudo
      improved Euler), so ``steps - 1`` intervals take exactly ``steps`` calls. ``steps < 2`` gives ``[0, T - 1]``.
    - UniPC: ``trailing(steps)`` ascending (``steps`` entries, no 0). UniPC only reads the length (= its number of
      steps and model calls) and spaces its own continuous times with the "UniPC skip type" option; its default
      ``time_uniform`` grid already starts at t = T - 1 and is uniform down to t = 0, which *is* trailing spacing.
      What "trailing" fixes for UniPC is the length: the WebUI's ``range(0, 1000, 1000 // steps)`` gives ``steps + 1``
      entries (so ``steps + 1`` calls) whenever ``steps`` does not divide 1000.

    int64, on the CPU.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown timestep sampler kind {kind!r}")
    n = int(steps)
    if kind == UNIPC:
        return spaced_timesteps(n, "trailing", num_train_timesteps).flip(0)
    intervals = n if kind != PLMS else max(n - 1, 1)
    trail = spaced_timesteps(intervals, "trailing", num_train_timesteps).flip(0)
    return torch.cat([trail.new_zeros(1), trail])


def model_calls(kind: str, timesteps_len: int) -> int:
    """How many model calls the WebUI's ``kind`` loop makes for a timestep list of this length (UniPC: its steps)."""
    if kind == PLMS:
        return timesteps_len if timesteps_len >= 2 else 0
    if kind == UNIPC:
        return timesteps_len
    return max(timesteps_len - 1, 0)


def _img2img_calls(kind: str, grid: torch.Tensor, t_enc: int) -> int:
    """img2img makes ``t_enc + 1`` calls, like the WebUI's k-diffusion img2img (``sigmas[steps - t_enc - 1:]``)."""
    return max(1, min(int(t_enc) + 1, model_calls(kind, len(grid))))


def img2img_get_timesteps(grid: torch.Tensor, kind: str) -> torch.Tensor:
    """What ``get_timesteps`` returns inside ``sample_img2img`` so that the WebUI noises the init latent at the level
    of the first model call.

    The WebUI noises at ``timesteps[t_enc]`` and hands ``timesteps[:t_enc]`` to the loop, which (DDIM) then starts one
    entry lower: the noise level and the first call disagree, and only ``t_enc - 1`` calls are made. We return a list
    whose entry ``t_enc`` is the start level of :func:`img2img_schedule` for every ``t_enc``; the loop's own list is
    then replaced by :func:`img2img_schedule` (the WebUI glue does that in its ``sampler.func`` wrapper).
    """
    if kind in (DDIM, DDIM_CFGPP):
        return grid[1:].clone()  # entry k = grid[k + 1], the start of t_enc + 1 calls
    if kind == PLMS:
        return torch.cat([grid[1:2], grid[1:]])  # entry k = grid[max(k, 1)]
    return grid.clone()  # UniPC: entry k = grid[k]


def img2img_schedule(grid: torch.Tensor, kind: str, t_enc: int) -> torch.Tensor:
    """The loop's ascending list for img2img with ``t_enc`` (``setup_img2img_steps``): ``t_enc + 1`` model calls
    starting at ``img2img_get_timesteps(grid, kind)[t_enc]``, ending where txt2img ends.

    With ``steps = n`` and denoising strength s (plain img2img, ``t_enc = int(min(s, 0.999) n)``) the first call is
    at the trailing timestep of step ``t_enc + 1`` from the end, ~``1000 (t_enc + 1) / n - 1``: t = 999 and ``n``
    calls for s = 1, within one step of ``1000 s`` otherwise. For the hires pass (``t_enc = requested - 1``) it is
    exactly the requested number of calls.
    """
    calls = _img2img_calls(kind, grid, t_enc)
    if kind in (DDIM, DDIM_CFGPP):
        return grid[: calls + 1].clone()
    if kind == PLMS:
        return grid[: max(calls, 2)].clone()
    return grid[:calls].clone()


# --- DDIM / DDIM CFG++ in v form --------------------------------------------------------------------------------------


def x0_eps_from_v(x: torch.Tensor, abar: float, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x0 = sqrt(abar) x - sqrt(1 - abar) v`` (Eq. 19) and ``eps = sqrt(abar) v + sqrt(1 - abar) x`` (Eq. 17).

    No division: exact for every abar in [0, 1], including abar_T = 0. Coefficients in float64, tensors in x's dtype.
    """
    sa, s1a = math.sqrt(abar), math.sqrt(1.0 - abar)
    return sa * x - s1a * v, sa * v + s1a * x


def ddim_eta_sigma(abar: float, abar_prev: float, eta: float) -> float:
    """DDIM's stochasticity ``eta * sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))`` (DDIM Eq. 16)."""
    if eta == 0:
        return 0.0
    return eta * math.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))


def ddim_step_v(
    x: torch.Tensor,
    v: torch.Tensor,
    abar: float,
    abar_prev: float,
    *,
    v_direction: torch.Tensor | None = None,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step from v, paper Eq. 21 with DDIM's eta: returns ``(x_prev, x0)``.

    ``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps_dir + sigma noise`` with x0 and eps from
    :func:`x0_eps_from_v`; ``eps_dir`` is the eps of ``v_direction`` (CFG++ uses the unconditional prediction there)
    or of ``v``. Never divides by sqrt(abar).
    """
    x0, eps = x0_eps_from_v(x, abar, v)
    if v_direction is not None and v_direction is not v:
        eps = math.sqrt(abar) * v_direction + math.sqrt(1.0 - abar) * x
    sigma = ddim_eta_sigma(abar, abar_prev, eta)
    out = math.sqrt(abar_prev) * x0 + math.sqrt(max(1.0 - abar_prev - sigma * sigma, 0.0)) * eps
    if sigma > 0:
        out = out + sigma * (noise if noise is not None else torch.randn_like(x))
    return out, x0


def _abar(alphas_cumprod: torch.Tensor) -> list[float]:
    return alphas_cumprod.detach().to("cpu", torch.float64).tolist()


@torch.no_grad()
def ddim_sample_v(
    model: VModel,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    eta: float = 0.0,
    randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDIM (and DDIM CFG++) over an ascending WebUI timestep list, in v form: ``len(timesteps) - 1`` model calls at
    ``timesteps[-1], ..., timesteps[1]``, each stepping to the entry below. ``callback(i, x, x0)`` after each step."""
    abar = _abar(alphas_cumprod)
    ts = [int(t) for t in timesteps.tolist()]
    for i in range(len(ts) - 1):
        index = len(ts) - 1 - i
        t, t_prev = ts[index], ts[index - 1]
        v, v_dir = model(x, t)
        noise = None
        sigma = ddim_eta_sigma(abar[t], abar[t_prev], eta)
        if sigma > 0:
            noise = randn_like(x)
        x, x0 = ddim_step_v(x, v, abar[t], abar[t_prev], v_direction=v_dir, eta=eta, noise=noise)
        if callback is not None:
            callback(i, x, x0)
    return x


# --- PLMS in data-prediction form -------------------------------------------------------------------------------------

#: Adams-Bashforth weights PLMS uses after its first step (newest prediction first): orders 2, 3, 4.
_AB = {1: (1.5, -0.5), 2: (23 / 12, -16 / 12, 5 / 12), 3: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def transfer_x0(x: torch.Tensor, x0: torch.Tensor, abar: float, abar_prev: float) -> torch.Tensor:
    """The deterministic DDIM transfer written with x0 (Eq. 21): ``eps = (x - sqrt(abar) x0) / sqrt(1 - abar)``,
    ``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps``. Divides by sqrt(1 - abar) only, which is >= 0.029 on
    every SD schedule (abar_0 = 0.99915): exact at abar = 0."""
    eps = (x - math.sqrt(abar) * x0) / math.sqrt(1.0 - abar)
    return math.sqrt(abar_prev) * x0 + math.sqrt(1.0 - abar_prev) * eps


@torch.no_grad()
def plms_sample_v(
    model: VModel,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    callback: Callback | None = None,
) -> torch.Tensor:
    """PLMS (pseudo linear multistep, Liu et al. 2022) with the multistep combination on **x0 predictions**.

    The WebUI's PLMS combines eps predictions of different steps and then divides by sqrt(abar): at t = 999 under
    ZTSNR that multiplies the step-to-step eps disagreement by 1/sqrt(abar_T) ~ 4519, a property of the eps form
    itself, not of rounding. Combining the data predictions x0 (each exact from v, Eq. 19) with the same weights
    (pseudo improved Euler first, then Adams-Bashforth 2/3/4) and transferring with :func:`transfer_x0` is the same
    pseudo-numerical method in the data-prediction parameterisation (as DPM-Solver++ / UniPC's ``predict_x0``), and is
    bounded at abar = 0. Same model calls as the WebUI: ``len(timesteps)`` (the first iteration calls twice).
    """
    abar = _abar(alphas_cumprod)
    ts = [int(t) for t in timesteps.tolist()]
    old: list[torch.Tensor] = []
    for i in range(len(ts) - 1):
        index = len(ts) - 1 - i
        t, t_next = ts[index], ts[max(index - 1, 0)]
        a, a_prev = abar[t], abar[ts[index - 1]]
        v, _ = model(x, t)
        x0_t, _ = x0_eps_from_v(x, a, v)
        if not old:
            x_mid = transfer_x0(x, x0_t, a, a_prev)
            v_next, _ = model(x_mid, t_next)
            x0_next, _ = x0_eps_from_v(x_mid, abar[t_next], v_next)
            x0_prime = (x0_t + x0_next) / 2
        else:
            weights = _AB[len(old)]
            x0_prime = weights[0] * x0_t
            for w, prev in zip(weights[1:], reversed(old), strict=False):
                x0_prime = x0_prime + w * prev
        x = transfer_x0(x, x0_prime, a, a_prev)
        old.append(x0_t)
        if len(old) >= 4:
            old.pop(0)
        if callback is not None:
            callback(i, x, x0_prime)
    return x


# --- UniPC (multistep, data prediction) -------------------------------------------------------------------------------


class DiscreteVPSchedule:
    """A discrete VP schedule in continuous time, as UniPC / DPM-Solver read it (Lu et al. 2022, Sec. 3.4).

    Step n of N (0-based) sits at ``t = (n + 1) / N``; ``log alpha_t = 0.5 log abar`` is interpolated piecewise
    linearly in t (and extrapolated with the end segments). ``alpha_t = sqrt(abar)``, ``sigma_t = sqrt(1 - abar)``,
    ``lambda_t = log(alpha_t / sigma_t)`` (half log-SNR). Float64 throughout. abar_T must be > 0 (lambda_T finite):
    the clamped ZTSNR table (4.9e-8) is fine.
    """

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        abar = alphas_cumprod.detach().to("cpu", torch.float64)
        self.total_n = abar.shape[0]
        self.t_array = torch.linspace(0.0, 1.0, self.total_n + 1, dtype=torch.float64)[1:]
        self.log_alpha = 0.5 * abar.log()

    @staticmethod
    def _interp(x: float, xp: torch.Tensor, yp: torch.Tensor) -> float:
        k = int(torch.searchsorted(xp, torch.tensor(x, dtype=torch.float64)).item())
        k = min(max(k, 1), xp.shape[0] - 1)
        x0, x1, y0, y1 = xp[k - 1].item(), xp[k].item(), yp[k - 1].item(), yp[k].item()
        return y0 + (x - x0) * (y1 - y0) / (x1 - x0)

    def log_alpha_at(self, t: float) -> float:
        return self._interp(t, self.t_array, self.log_alpha)

    def alpha(self, t: float) -> float:
        return math.exp(self.log_alpha_at(t))

    def sigma(self, t: float) -> float:
        return math.sqrt(-math.expm1(2.0 * self.log_alpha_at(t)))

    def lam(self, t: float) -> float:
        la = self.log_alpha_at(t)
        return la - 0.5 * math.log(-math.expm1(2.0 * la))

    def inverse_lambda(self, lam: float) -> float:
        log_alpha = -0.5 * float(torch.logaddexp(torch.tensor(0.0, dtype=torch.float64), torch.tensor(-2.0 * lam)))
        # log alpha decreases with t: interpolate on the flipped arrays
        return self._interp(log_alpha, self.log_alpha.flip(0), self.t_array.flip(0))

    def time_steps(self, skip_type: str, t_start: float, t_end: float, steps: int) -> list[float]:
        """``steps + 1`` continuous times from ``t_start`` down to ``t_end`` (UniPC's ``skip_type``)."""
        if skip_type == "time_uniform":
            return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64).tolist()
        if skip_type == "time_quadratic":
            return (torch.linspace(t_start**0.5, t_end**0.5, steps + 1, dtype=torch.float64) ** 2).tolist()
        if skip_type == "logSNR":
            lams = torch.linspace(self.lam(t_start), self.lam(t_end), steps + 1, dtype=torch.float64).tolist()
            return [self.inverse_lambda(v) for v in lams]
        raise ValueError(f"unknown UniPC skip type {skip_type!r}")

    def model_input_time(self, t: float) -> float:
        """The model's (discrete, possibly fractional) timestep for continuous t: ``(t - 1/N) * N``."""
        return (t - 1.0 / self.total_n) * self.total_n


def _unipc_update(
    ns: DiscreteVPSchedule,
    x: torch.Tensor,
    model_prev: list[torch.Tensor],
    t_prev: list[float],
    t: float,
    order: int,
    variant: str,
    data_fn: Callable[[torch.Tensor, float], torch.Tensor],
    use_corrector: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One UniPC step (UniP predictor + UniC corrector, B(h) variants, data prediction; Zhao et al. 2023, Alg. 1-2)."""
    t_p0 = t_prev[-1]
    lam_p0, lam_t = ns.lam(t_p0), ns.lam(t)
    m0 = model_prev[-1]
    alpha_t = ns.alpha(t)
    h = lam_t - lam_p0
    rks: list[float] = []
    d1s: list[torch.Tensor] = []
    for i in range(1, order):
        rk = (ns.lam(t_prev[-(i + 1)]) - lam_p0) / h
        rks.append(rk)
        d1s.append((model_prev[-(i + 1)] - m0) / rk)
    rks.append(1.0)
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = math.expm1(hh)
    else:
        raise ValueError(f"UniPC variant {variant!r} is not supported here (bh1, bh2)")
    rows, b = [], []
    factorial = 1
    rk_t = torch.tensor(rks, dtype=torch.float64)
    for i in range(1, order + 1):
        rows.append(rk_t ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    r = torch.stack(rows)
    bt = torch.tensor(b, dtype=torch.float64)
    base = (ns.sigma(t) / ns.sigma(t_p0)) * x - (alpha_t * h_phi_1) * m0
    pred = 0
    if d1s:
        rhos_p = [0.5] if order == 2 else torch.linalg.solve(r[:-1, :-1], bt[:-1]).tolist()
        for rho, d in zip(rhos_p, d1s, strict=False):
            pred = pred + rho * d
    x_t = base - (alpha_t * b_h) * pred
    if not use_corrector:
        return x_t, None
    rhos_c = [0.5] if order == 1 else torch.linalg.solve(r, bt).tolist()
    model_t = data_fn(x_t, t)
    corr = 0
    for rho, d in zip(rhos_c[:-1], d1s, strict=False):
        corr = corr + rho * d
    x_t = base - (alpha_t * b_h) * (corr + rhos_c[-1] * (model_t - m0))
    return x_t, model_t


@torch.no_grad()
def unipc_sample_v(
    model: Callable[[torch.Tensor, float], torch.Tensor],
    x: torch.Tensor,
    steps: int,
    alphas_cumprod: torch.Tensor,
    *,
    t_start: float | None = None,
    order: int = 3,
    skip_type: str = "time_uniform",
    variant: str = "bh1",
    lower_order_final: bool = True,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Multistep UniPC (data prediction, B(h) variants) with x0 taken exactly from v: ``x0 = alpha_t x - sigma_t v``.

    ``model(x, t_input) -> v`` gets the fractional model timestep ``(t - 1/N) N``. alpha_t, sigma_t are the
    interpolated ones the solver's x_t is scaled with (:class:`DiscreteVPSchedule`), so the data prediction is exact
    where the eps route ``(x - sigma_t eps) / alpha_t`` divides by alpha_T ~ 2.2e-4. ``steps`` model calls (the last
    step has no corrector and needs no evaluation), like the WebUI's. ``order`` is clamped to ``steps`` (the WebUI
    asserts instead).
    """
    ns = DiscreteVPSchedule(alphas_cumprod)
    t_0 = 1.0 / ns.total_n
    t_end_start = 1.0 if t_start is None else float(t_start)
    order = max(1, min(int(order), int(steps)))

    def data_fn(xx: torch.Tensor, t: float) -> torch.Tensor:
        v = model(xx, ns.model_input_time(t))
        return ns.alpha(t) * xx - ns.sigma(t) * v

    ts = ns.time_steps(skip_type, t_end_start, t_0, int(steps))
    model_prev = [data_fn(x, ts[0])]
    t_prev = [ts[0]]
    index = 0
    for init_order in range(1, order):
        x, m = _unipc_update(ns, x, model_prev, t_prev, ts[init_order], init_order, variant, data_fn, True)
        if m is None:
            m = data_fn(x, ts[init_order])
        if callback is not None:
            callback(index, x, m)
        index += 1
        model_prev.append(m)
        t_prev.append(ts[init_order])
    for step in range(order, steps + 1):
        step_order = min(order, steps + 1 - step) if lower_order_final else order
        use_corrector = step != steps
        x, m = _unipc_update(ns, x, model_prev, t_prev, ts[step], step_order, variant, data_fn, use_corrector)
        if callback is not None:
            callback(index, x, m if m is not None else x)
        index += 1
        for i in range(order - 1):
            t_prev[i] = t_prev[i + 1]
            model_prev[i] = model_prev[i + 1]
        t_prev[-1] = ts[step]
        if step < steps:
            model_prev[-1] = m if m is not None else data_fn(x, ts[step])
    return x
