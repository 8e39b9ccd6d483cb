"""Closed-form (ideal) denoisers and a WebUI-faithful sampling harness: an ideal-denoiser proxy for schedule studies.

A trained UNet approximates the posterior mean ``D(x; sigma) = E[x0 | x0 + sigma * eps = x]`` (k-diffusion's
variance-exploding convention, Karras et al. 2022 Eq. 3). For the two data models here that mean is known in closed
form, so samplers and noise schedules can be compared with the network error taken out:

- :class:`GaussianMixtureImages`: a finite mixture of isotropic Gaussians around K template images (very dark, mid-tone
  and very bright, with texture; optional class labels for classifier-free guidance).
- :class:`GaussianPowerSpectrum`: a stationary Gaussian image model, diagonal in the 2-D DFT basis, with power
  ~ 1/|f|^alpha and a strong DC (brightness) term. Every deterministic sampler is then linear per frequency, and
  :func:`exact_generated_variance` gives the generated variance per frequency exactly (stochastic samplers too, in
  expectation).

**The data distribution is the same in every configuration; only the sampler's schedule differs.** A checkpoint
"trained on the stock SD schedule" is still evaluated through the same exact posterior mean. What the stock schedule gets
wrong is its *starting point*: SD1.5's table ends at ``sigma_max ~ 14.61`` (``sqrt(abar_T) = 0.068``, SNR 0.0047, paper
Table 1), and the WebUI starts txt2img from ``x_T = noise * sigma_max`` as if nothing of the image were left. The true
``x`` at that noise level is ``x0 + 14.61 * eps``: its low frequencies still carry the image (in an orthonormal DFT basis
the DC coefficient of a ``64 x 64`` channel is ``64 * brightness``, comparable with 14.6). The exact denoiser at
``sigma = 14.6`` is handed an ``x`` that is "too neutral" (no brightness signal at all), so it predicts a mid-tone image
and the sampler cannot recover: generated brightness is compressed toward the data mean (paper Sec. 3.1, "leaked
low-frequency signal pins brightness to medium"). With a zero-terminal-SNR table (``sigma_max ~ 4518.8``) pure noise *is*
the right start, and what remains is discretisation error of the sampler, which these models also measure exactly.
(One consequence worth knowing: a deterministic first-order step from sigma_max ~ 4518.8 to sigma_1 lands on
``D + sigma_1 * noise`` with ``D`` the data mean, i.e. it is the stock flaw again at sigma_1 instead of 14.6; per
frequency the variance kept is ``sigma_1^2 / (P + sigma_1^2)``. ZTSNR helps brightness only as far as sigma_1 is large.)

Wrappers :class:`VPredictionModel` / :class:`EpsPredictionModel` expose a denoiser as a CompVis model
(``alphas_cumprod`` + ``apply_model(x, t, cond)``) so that ``k_diffusion.external.CompVisVDenoiser`` /
``CompVisDenoiser`` reproduce it, exactly as the WebUI wraps an SD checkpoint.

All maths in float64. Nothing here needs a GPU, the WebUI or downloaded weights.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, for lib_vpred when run as bench/*.py

from lib_vpred.guidance import v_from_denoised
from lib_vpred.sampling import with_euler_first_step
from lib_vpred.schedule import (
    scaled_linear_alphas_cumprod,
    sigmas_from_alphas_cumprod,
    spaced_timesteps,
    trailing_sigmas,
    ztsnr_alphas_cumprod,
)

Denoiser = Callable[..., torch.Tensor]

#: Everything in this module computes in double precision (the ZTSNR sigma_max ~ 4518.8 squares to 2e7).
DTYPE = torch.float64

# --- tone templates (the mixture used by the demo and the fidelity bench) -------------------------------------------

#: Template brightness levels (mean pixel value in [-1, 1] image space): very dark, mid-tone, very bright. +-0.9 is the
#: "solid black / solid white" regime the paper's Fig. 1-2 prompts ask for; 0 is what the stock schedule drifts to.
TONES: tuple[float, ...] = (-0.9, 0.0, 0.9)

#: Texture amplitude (zero-mean unit-std pattern scaled by this), the same for every tone so that texture contrast
#: carries no information about brightness; small enough for +-0.9 templates to stay near [-1, 1].
TEXTURE_AMPLITUDE = 0.08

#: Tone mix of each class (rows: classes "night", "overcast", "day"; columns: :data:`TONES`). Every column sums to 1,
#: so the unconditional data has a third of each tone, while the class-conditional mean brightness differs
#: (-0.45, 0, +0.45): a "prompt" that asks for a dark or bright image, which classifier-free guidance can exaggerate.
CLASS_TONE_WEIGHTS: tuple[tuple[float, ...], ...] = ((0.6, 0.3, 0.1), (0.3, 0.4, 0.3), (0.1, 0.3, 0.6))

#: Per-class colour tint amplitude (zero-mean over channels), so classes differ in colour as well as pattern.
CLASS_TINT = 0.05

#: Standard deviation of each isotropic mixture component ("film grain" around a template), in pixel units. Small
#: against the template texture, so each component is a distinct mode at low sigma.
COMPONENT_STD = 0.05

#: Brightness thresholds that classify an image as dark / bright: halfway between adjacent entries of :data:`TONES`.
DARK_BELOW = (TONES[0] + TONES[1]) / 2
BRIGHT_ABOVE = (TONES[1] + TONES[2]) / 2

# --- Gaussian power-spectrum model (fidelity bench) ------------------------------------------------------------------

#: Spectral slope of natural images: power ~ 1/|f|^2 (van der Schaaf & van Hateren 1996; Field 1987).
NATURAL_ALPHA = 2.0

#: Per-pixel variance of the non-DC (texture) part, and std of the per-channel mean (brightness). Chosen to resemble
#: SD VAE latents (per-pixel std ~ 1 with a sizeable per-channel mean spread); the DC power is then
#: ``H * W * BRIGHTNESS_STD**2`` = 1024 for 64 x 64, i.e. sqrt(P_DC) = 32 >> sigma_max = 14.6 of the stock table.
TEXTURE_VAR = 0.5
BRIGHTNESS_STD = 0.5

#: Frequency bands in cycles per image (|f| = sqrt(fx^2 + fy^2)), for a 64 x 64 image: DC, then low / mid / high.
LOW_BAND_MAX = 4.0
MID_BAND_MAX = 16.0
BANDS: tuple[str, ...] = ("dc", "low", "mid", "high")

# --- WebUI facts re-derived (AUTOMATIC1111 v1.10.1, see shared/design/webui-hooks.md section 4) ------------------------

#: Karras rho used by the WebUI's "Karras" scheduler (sd_schedulers.py:133, default_rho=7.0).
KARRAS_RHO = 7.0

#: Default alpha = beta of the WebUI "Beta" scheduler (shared options ``beta_dist_alpha``/``beta_dist_beta``).
BETA_SCHEDULER_AB = 0.6

#: "Align Your Steps" SD1.5 table (sd_schedulers.py:44): fixed sigmas, independent of the model's table.
AYS_SD15_SIGMAS: tuple[float, ...] = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)

#: Scheduler the WebUI's "Automatic" picks per sampler (sd_samplers_kdiffusion.py sampler options): Karras for DPM++
#: 2M/SDE, the model's own uniform ``get_sigmas`` for Euler, Euler a and Heun.
DEFAULT_SCHEDULER: dict[str, str] = {
    "Euler": "uniform",
    "Euler a": "uniform",
    "Heun": "uniform",
    "DPM++ 2M": "karras",
    "DPM++ SDE": "karras",
}

#: Samplers this harness runs; all but DDIM are k-diffusion's own functions, as the WebUI uses them.
SAMPLERS: tuple[str, ...] = ("Euler", "Euler a", "DPM++ 2M", "DPM++ SDE", "Heun", "DDIM")
STOCHASTIC_SAMPLERS: frozenset[str] = frozenset({"Euler a", "DPM++ SDE"})


#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`keep_freed_memory` sets: serve allocations below
#: 256 MiB from the heap and trim it only above 1 GiB, instead of mmap/munmap per multi-MB tensor.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES, _TRIM_THRESHOLD_BYTES = 256 << 20, 1 << 30


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed tensor buffers rather than unmap them; returns whether it applied (glibc only).

    The samplers allocate and free several multi-MB float64 tensors per step; with glibc's defaults each is a fresh
    mmap and the page faults cost ~20% of the demo's run time (sys 4.7 s of 25 s in one measurement, 0.7 s after).
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
            and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
        )
    except (OSError, AttributeError):
        return False


# =====================================================================================================================
# Gaussian mixture of template images
# =====================================================================================================================


def _smooth_noise(generator: torch.Generator, channels: int, size: int, cutoff: float) -> torch.Tensor:
    """Zero-mean, unit-std random field with only frequencies below ``cutoff`` cycles per image (a soft texture)."""
    white = torch.randn(channels, size, size, generator=generator, dtype=DTYPE)
    f = torch.fft.fftfreq(size, d=1.0 / size, dtype=DTYPE)
    radius = (f[:, None] ** 2 + f[None, :] ** 2).sqrt()
    field = torch.fft.ifft2(torch.fft.fft2(white) * (radius <= cutoff)).real
    field = field - field.mean(dim=(-2, -1), keepdim=True)
    return field / field.std().clamp_min(1e-12)


def tone_templates(
    channels: int = 3, size: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Templates for 3 classes x 3 tones: ``(templates [9, C, S, S], class_ids [9], weights [9])``.

    Class c has its own pattern (0: horizontal stripes, 1: checker, 2: rings, each plus a smooth random texture) and
    colour tint, and comes in every tone of :data:`TONES` (texture amplitude :data:`TEXTURE_AMPLITUDE`). Each
    template's mean pixel value is exactly its tone. Weights: ``1/3 * CLASS_TONE_WEIGHTS[c][tone]``.
    """
    g = torch.Generator().manual_seed(seed)
    coords = (torch.arange(size, dtype=DTYPE) + 0.5) / size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    rr = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2).sqrt()
    patterns = [
        torch.sin(2 * math.pi * 3 * yy),
        torch.sin(2 * math.pi * 2 * xx) * torch.sin(2 * math.pi * 2 * yy),
        torch.cos(2 * math.pi * 4 * rr),
    ]
    templates, classes, weights = [], [], []
    for class_id, pattern in enumerate(patterns):
        texture = pattern.expand(channels, size, size) + 0.5 * _smooth_noise(g, channels, size, cutoff=4.0)
        texture = (texture - texture.mean()) / texture.std()
        tint = torch.randn(channels, 1, 1, generator=g, dtype=DTYPE)
        tint = CLASS_TINT * (tint - tint.mean()) / tint.std().clamp_min(1e-12) if channels > 1 else tint * 0
        for tone, mix in zip(TONES, CLASS_TONE_WEIGHTS[class_id], strict=True):
            t = TEXTURE_AMPLITUDE * texture + tint
            templates.append(t - t.mean() + tone)
            classes.append(class_id)
            weights.append(mix / len(patterns))
    return torch.stack(templates), torch.tensor(classes, dtype=torch.long), torch.tensor(weights, dtype=DTYPE)


class GaussianMixtureImages:
    """Data ``x0 ~ sum_k pi_k N(mu_k, s^2 I)`` over K template images ``mu_k``; exact posterior mean in closed form.

    With ``x = x0 + sigma * eps`` (k-diffusion VE convention), ``x | k ~ N(mu_k, (s^2 + sigma^2) I)``, so the
    posterior responsibilities are ``w_k(x) = softmax_k(log pi_k - ||x - mu_k||^2 / (2 (s^2 + sigma^2)))`` (the
    normalising terms are equal for all k because ``s`` is shared) and

        E[x0 | x] = sum_k w_k (mu_k + s^2/(s^2 + sigma^2) (x - mu_k))
                  = s^2/(s^2 + sigma^2) x + sigma^2/(s^2 + sigma^2) sum_k w_k mu_k.

    ``||x - mu_k||^2`` is expanded as ``||x||^2 - 2 x.mu_k + ||mu_k||^2`` and the k-independent ``||x||^2`` dropped, so
    the logits stay O(||mu||^2 / sigma^2 + ||mu|| ||x|| / sigma^2) and the log-sum-exp is stable in float64 from
    sigma ~ 0.03 up to the ZTSNR sigma_max ~ 4518.8 (and beyond; sigma = 0 is allowed and returns x).

    Conditioning: ``cond`` is ``None`` (unconditional: all templates) or a ``[B]`` integer tensor of class ids, one per
    image, where a negative id means unconditional. The conditional posterior is the mixture restricted to the
    templates of that class (renormalised ``pi``), which makes classifier-free guidance meaningful.
    """

    def __init__(
        self,
        templates: torch.Tensor,
        *,
        weights: torch.Tensor | None = None,
        classes: torch.Tensor | None = None,
        component_std: float = COMPONENT_STD,
    ) -> None:
        if templates.ndim < 2:
            raise ValueError(f"templates must be [K, ...], got shape {tuple(templates.shape)}")
        k = templates.shape[0]
        self.templates = templates.to(DTYPE)
        self.shape: tuple[int, ...] = tuple(templates.shape[1:])
        self.means = self.templates.reshape(k, -1)  # [K, D]
        self.dim = self.means.shape[1]
        w = torch.full((k,), 1.0 / k, dtype=DTYPE) if weights is None else weights.to(DTYPE)
        if w.shape != (k,) or bool((w <= 0).any()):
            raise ValueError("weights must be K positive numbers")
        self.weights = w / w.sum()
        self.classes = torch.zeros(k, dtype=torch.long) if classes is None else classes.to(torch.long)
        if self.classes.shape != (k,):
            raise ValueError("classes must hold one class id per template")
        self.num_classes = int(self.classes.max()) + 1
        if not component_std > 0:
            raise ValueError("component_std must be positive")
        self.component_std = float(component_std)
        self._half_sq_norms = 0.5 * (self.means * self.means).sum(dim=1)  # [K]

    @classmethod
    def tones(
        cls, channels: int = 3, size: int = 32, seed: int = 0, component_std: float = COMPONENT_STD
    ) -> GaussianMixtureImages:
        """The 3-class x 3-tone model of :func:`tone_templates`."""
        templates, classes, weights = tone_templates(channels, size, seed)
        return cls(templates, weights=weights, classes=classes, component_std=component_std)

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _allowed(self, cond: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if cond is None:
            return None
        c = torch.as_tensor(cond, dtype=torch.long).reshape(-1)
        if c.numel() == 1 and batch != 1:
            c = c.expand(batch)
        if c.shape[0] != batch:
            raise ValueError(f"cond has {c.shape[0]} entries for a batch of {batch}")
        return (c[:, None] < 0) | (self.classes[None, :] == c[:, None])  # [B, K]

    def posterior_logits(
        self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Unnormalised log responsibilities ``log pi_k - ||x - mu_k||^2 / (2 (s^2 + sigma^2))`` up to a per-row constant."""
        xf = x.to(DTYPE).reshape(x.shape[0], -1)
        s = torch.as_tensor(sigma, dtype=DTYPE).reshape(-1, 1).expand(xf.shape[0], 1)
        var = self.component_std**2 + s * s  # [B, 1]
        logits = (xf @ self.means.T - self._half_sq_norms[None, :]) / var + self.weights.log()[None, :]
        allowed = self._allowed(cond, xf.shape[0])
        if allowed is not None:
            logits = logits.masked_fill(~allowed, -math.inf)
        return logits

    def posterior_weights(
        self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Responsibilities ``p(k | x)`` (``[B, K]``, rows sum to 1)."""
        return torch.softmax(self.posterior_logits(x, sigma, cond), dim=1)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Exact ``E[x0 | x0 + sigma * eps = x]`` (``[B, ...]``), returned in ``x.dtype``; see the class docstring."""
        xf = x.to(DTYPE).reshape(x.shape[0], -1)
        s = torch.as_tensor(sigma, dtype=DTYPE).reshape(-1, 1).expand(xf.shape[0], 1)
        s2 = s * s
        var = self.component_std**2 + s2
        w = self.posterior_weights(x, s.reshape(-1), cond)
        # Scale the small [B, K] weights rather than the [B, D] result, then one fused multiply-add.
        out = torch.addcmul((w * (s2 / var)) @ self.means, xf, self.component_std**2 / var)
        return out.reshape(x.shape).to(x.dtype)

    __call__ = denoise

    def sample(
        self, n: int, generator: torch.Generator, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws ``x0`` from the data (or the class-conditional) distribution, and the template index of each."""
        allowed = self._allowed(cond, n)
        probs = self.weights.expand(n, -1)
        if allowed is not None:
            probs = probs * allowed
        idx = torch.multinomial(probs, 1, generator=generator).reshape(-1)
        noise = torch.randn(n, self.dim, generator=generator, dtype=DTYPE)
        return (self.means[idx] + self.component_std * noise).reshape(n, *self.shape), idx

    # -- brightness statistics ---------------------------------------------------------------------------------------

    def template_brightness(self) -> torch.Tensor:
        """Mean pixel value of each template (``[K]``)."""
        return self.means.mean(dim=1)

    def brightness_std(self) -> float:
        """Exact std of per-image brightness (mean pixel value) under the data distribution.

        ``Var = sum_k pi_k (b_k - b_bar)^2 + s^2 / D``: between-template spread plus the grain averaged over D pixels.
        """
        b = self.template_brightness()
        mean = (self.weights * b).sum()
        var = (self.weights * (b - mean) ** 2).sum() + self.component_std**2 / self.dim
        return float(var.sqrt())

    def mean_square(self) -> float:
        """Exact ``E[mean_pixels x0^2]`` (the data's mean squared pixel value)."""
        per_template = (self.means * self.means).mean(dim=1) + self.component_std**2
        return float((self.weights * per_template).sum())

    def within_image_variance(self) -> float:
        """Exact ``E[mean_pixels (x0 - mean_pixels x0)^2]``: the data's mean within-image pixel variance.

        Per template ``var_pixels(mu_k) + s^2 (D - 1) / D`` (the grain minus its share in the image mean), averaged with
        the weights.
        """
        centred = self.means - self.means.mean(dim=1, keepdim=True)
        per_template = (centred * centred).mean(dim=1) + self.component_std**2 * (self.dim - 1) / self.dim
        return float((self.weights * per_template).sum())

    def tone_fractions(self) -> tuple[float, float]:
        """Data fractions of dark (< :data:`DARK_BELOW`) and bright (> :data:`BRIGHT_ABOVE`) images (template level)."""
        b = self.template_brightness()
        return float(self.weights[b < DARK_BELOW].sum()), float(self.weights[b > BRIGHT_ABOVE].sum())

    def class_brightness(self) -> torch.Tensor:
        """Exact mean brightness of each class's conditional distribution (``[num_classes]``)."""
        b = self.template_brightness()
        return torch.stack(
            [
                (self.weights * b)[self.classes == c].sum() / self.weights[self.classes == c].sum()
                for c in range(self.num_classes)
            ]
        )

    def nearest_template(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest template (Euclidean) for each image: the mode a sample landed in."""
        xf = x.to(DTYPE).reshape(x.shape[0], -1)
        return (xf @ self.means.T - self._half_sq_norms[None, :]).argmax(dim=1)


def brightness(x: torch.Tensor) -> torch.Tensor:
    """Per-image brightness: the mean over all non-batch dims (``[B]``)."""
    return x.to(DTYPE).reshape(x.shape[0], -1).mean(dim=1)


# =====================================================================================================================
# Gaussian power-spectrum model
# =====================================================================================================================


class GaussianPowerSpectrum:
    """Stationary Gaussian images ``x0 ~ N(mean, C)`` with ``C`` diagonal in the orthonormal 2-D DFT basis.

    Per channel, the DFT coefficient at frequency ``f`` (cycles per image) has variance ``P(f) = c / |f|^alpha``
    (``alpha = 2``: natural-image-like), ``c`` set so the non-DC part has per-pixel variance ``texture_var``; the DC
    coefficient has ``P(0) = H * W * brightness_std^2`` (a strong brightness component). Channels are independent.

    Exact posterior mean per frequency (a Wiener filter): ``E[X0_f | X_f] = mean_f + P_f / (P_f + sigma^2) (X_f - mean_f)``
    with ``X = fft2(x, norm="ortho")``; ``P`` is symmetric in ``f -> -f``, so the result is real.
    """

    def __init__(
        self,
        channels: int = 4,
        size: int = 64,
        *,
        alpha: float = NATURAL_ALPHA,
        texture_var: float = TEXTURE_VAR,
        brightness_std: float = BRIGHTNESS_STD,
        mean: float = 0.0,
    ) -> None:
        self.shape = (channels, size, size)
        self.alpha = float(alpha)
        self.mean = float(mean)
        f = torch.fft.fftfreq(size, d=1.0 / size, dtype=DTYPE)
        self.radius = (f[:, None] ** 2 + f[None, :] ** 2).sqrt()  # [S, S], cycles per image
        shape_power = torch.where(
            self.radius > 0, self.radius.clamp_min(1.0) ** -self.alpha, torch.zeros((), dtype=DTYPE)
        )
        # Parseval (orthonormal DFT): per-pixel variance = sum_f P(f) / (H * W).
        scale = texture_var * size * size / shape_power.sum()
        power = scale * shape_power
        power[0, 0] = size * size * brightness_std**2
        self.power = power.expand(channels, size, size).clone()  # [C, S, S]

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: object = None) -> torch.Tensor:
        """Exact posterior mean (Wiener filter per frequency); ``cond`` is ignored. Returned in ``x.dtype``."""
        del cond
        xf = x.to(DTYPE)
        s = torch.as_tensor(sigma, dtype=DTYPE).reshape(-1, *([1] * (x.ndim - 1)))
        gain = self.power / (self.power + s * s)
        spec = torch.fft.fft2(xf - self.mean, norm="ortho")
        return (self.mean + torch.fft.ifft2(gain * spec, norm="ortho").real).to(x.dtype)

    __call__ = denoise

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` exact draws from the data distribution."""
        white = torch.randn(n, *self.shape, generator=generator, dtype=DTYPE)
        spec = torch.fft.fft2(white, norm="ortho") * self.power.sqrt()
        return self.mean + torch.fft.ifft2(spec, norm="ortho").real

    def band_masks(self) -> dict[str, torch.Tensor]:
        """Boolean ``[C, S, S]`` masks for :data:`BANDS` (DC; 0 < |f| <= 4; 4 < |f| <= 16; |f| > 16, scaled to 64 px)."""
        size = self.shape[-1]
        r = self.radius * (64.0 / size)  # bands defined for 64 px; scale so a smaller test image keeps proportions
        masks = {
            "dc": r == 0,
            "low": (r > 0) & (r <= LOW_BAND_MAX),
            "mid": (r > LOW_BAND_MAX) & (r <= MID_BAND_MAX),
            "high": r > MID_BAND_MAX,
        }
        return {k: v.expand(self.shape) for k, v in masks.items()}

    def band_ratios(self, generated_variance: torch.Tensor) -> dict[str, float]:
        """Mean over the modes of each band of ``generated_variance / P`` (1.0 = the right amount of variance)."""
        ratio = generated_variance.to(DTYPE) / self.power
        return {name: float(ratio[mask].mean()) for name, mask in self.band_masks().items()}

    def empirical_variance(self, x: torch.Tensor) -> torch.Tensor:
        """Per-mode variance ``mean_batch |fft2(x - mean)|^2`` of a batch of samples (``[C, S, S]``)."""
        spec = torch.fft.fft2(x.to(DTYPE) - self.mean, norm="ortho")
        return (spec.abs() ** 2).mean(dim=0)


# =====================================================================================================================
# CompVis-style model wrappers (so k_diffusion.external.CompVis[V]Denoiser reproduces the exact denoiser)
# =====================================================================================================================


class _CompVisModel:
    """Common part: an ``alphas_cumprod`` table and the inverse of k-diffusion's ``DiscreteSchedule.sigma_to_t``."""

    parameterization = "eps"

    def __init__(self, denoiser: Denoiser, alphas_cumprod: torch.Tensor) -> None:
        self.denoiser = denoiser
        self.alphas_cumprod = alphas_cumprod
        # Same arithmetic as k-diffusion (external.py: ((1 - a) / a) ** 0.5, then log) in the table's dtype, so the
        # interpolation below is the exact inverse of the one the CompVis denoiser used to turn sigma into t.
        a = alphas_cumprod
        self.log_sigmas = (((1 - a) / a) ** 0.5).log().to(DTYPE)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Linear interpolation of log sigma between integer timesteps, in float64 (k-diffusion's rule, no fp32 cast)."""
        t = torch.as_tensor(t, dtype=DTYPE).clamp(0, self.log_sigmas.shape[0] - 1)
        low = t.floor().long()
        high = t.ceil().long()
        w = t - low.to(DTYPE)
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def _denoise_vp(
        self, x_vp: torch.Tensor, t: torch.Tensor, cond: object
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sigma = self.t_to_sigma(t).reshape(-1)
        scale = (1 + sigma * sigma).sqrt().reshape(-1, *([1] * (x_vp.ndim - 1)))
        x_ve = x_vp.to(DTYPE) * scale
        return x_ve, sigma, self.denoiser(x_ve, sigma, cond)


class VPredictionModel(_CompVisModel):
    """A v-prediction "checkpoint" whose ``apply_model`` returns the exact v of paper Eq. 11.

    ``CompVisVDenoiser`` calls ``apply_model(x * c_in, sigma_to_t(sigma), cond)`` with ``c_in = 1/sqrt(sigma^2 + 1)``;
    we recover sigma from t (same table, same interpolation), rebuild ``x_ve`` and return
    ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` in the form ``v = (x_ve/(sigma^2+1) - D) sqrt(sigma^2+1)/sigma``
    (:func:`lib_vpred.guidance.v_from_denoised`), which stays finite at the ZTSNR sigma_max ~ 4518.8. The denoiser's
    ``c_skip x + c_out v`` then gives back ``D`` to rounding error.
    """

    parameterization = "v"

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: object = None, **_: object) -> torch.Tensor:
        """Exact v for a VP-scaled input ``x`` at (continuous) timestep ``t``."""
        x_ve, sigma, d = self._denoise_vp(x, t, cond)
        return v_from_denoised(x_ve, sigma, d).to(x.dtype)


class EpsPredictionModel(_CompVisModel):
    """An eps-prediction "checkpoint" (stock SD): ``apply_model`` returns ``eps = (x_ve - D) / sigma`` exactly.

    For ``k_diffusion.external.CompVisDenoiser`` (``D = x - sigma * eps``). Degenerate at zero terminal SNR (paper
    Sec. 3.2): use it with the stock table only.
    """

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: object = None, **_: object) -> torch.Tensor:
        """Exact eps for a VP-scaled input ``x`` at (continuous) timestep ``t``."""
        x_ve, sigma, d = self._denoise_vp(x, t, cond)
        return ((x_ve - d.to(DTYPE)) / sigma.reshape(-1, *([1] * (x.ndim - 1)))).to(x.dtype)


# =====================================================================================================================
# Tables, schedulers and samplers as the WebUI runs them
# =====================================================================================================================


def stock_alphas_cumprod() -> torch.Tensor:
    """SD1.5's alpha-bar as the WebUI holds it (float32 ``model.alphas_cumprod``), widened to float64."""
    return scaled_linear_alphas_cumprod().to(torch.float32).to(DTYPE)


def builtin_ztsnr_alphas_cumprod() -> torch.Tensor:
    """The WebUI built-in "Zero Terminal SNR" table (Algorithm 1, last entry clamped to 4.897e-8), float32 -> float64."""
    return ztsnr_alphas_cumprod(scaled_linear_alphas_cumprod(), dtype=torch.float32).to(DTYPE)


def make_denoiser(model: Denoiser, alphas_cumprod: torch.Tensor, parameterization: str):
    """``CompVisVDenoiser(VPredictionModel(...))`` or ``CompVisDenoiser(EpsPredictionModel(...))`` (k-diffusion)."""
    from k_diffusion.external import CompVisDenoiser, CompVisVDenoiser

    if parameterization == "v":
        return CompVisVDenoiser(VPredictionModel(model, alphas_cumprod))
    if parameterization == "eps":
        return CompVisDenoiser(EpsPredictionModel(model, alphas_cumprod))
    raise ValueError(f"parameterization must be 'v' or 'eps', got {parameterization!r}")


def webui_sigmas(scheduler: str, model_wrap, steps: int) -> torch.Tensor:
    """Sigma list (float64, descending, ``steps + 1`` entries) of a WebUI k-diffusion scheduler, re-derived.

    Formulas from AUTOMATIC1111 v1.10.1 ``modules/sd_schedulers.py`` with ``sigma_min, sigma_max = model_wrap.sigmas[0],
    [-1]`` (sd_samplers_kdiffusion.py:93); ``"trailing"`` is this extension's :func:`lib_vpred.schedule.trailing_sigmas`.
    ``kl_optimal`` ends at sigma_min, not 0, exactly as the WebUI's (``n + 1`` points, no appended zero).
    """
    import k_diffusion.sampling as ks
    from scipy import stats

    sigma_min, sigma_max = float(model_wrap.sigmas[0]), float(model_wrap.sigmas[-1])
    n = steps
    if scheduler == "uniform":
        sig = model_wrap.get_sigmas(n)
    elif scheduler == "karras":
        sig = ks.get_sigmas_karras(n, sigma_min, sigma_max, rho=KARRAS_RHO)
    elif scheduler == "exponential":
        sig = ks.get_sigmas_exponential(n, sigma_min, sigma_max)
    elif scheduler in ("sgm_uniform", "normal"):
        start = model_wrap.sigma_to_t(torch.tensor(sigma_max, dtype=DTYPE))
        end = model_wrap.sigma_to_t(torch.tensor(sigma_min, dtype=DTYPE))
        ts = torch.linspace(float(start), float(end), n + 1)[:-1] if scheduler == "sgm_uniform" else None
        if ts is None:
            ts = torch.linspace(float(start), float(end), n)
        sig = torch.tensor([float(model_wrap.t_to_sigma(t)) for t in ts] + [0.0])
    elif scheduler == "simple":
        ss = len(model_wrap.sigmas) / n
        sig = torch.tensor([float(model_wrap.sigmas[-(1 + int(x * ss))]) for x in range(n)] + [0.0])
    elif scheduler == "beta":
        ts = 1 - torch.linspace(0, 1, n, dtype=DTYPE).numpy()
        ppf = stats.beta.ppf(ts, BETA_SCHEDULER_AB, BETA_SCHEDULER_AB)
        sig = torch.tensor([sigma_min + float(x) * (sigma_max - sigma_min) for x in ppf] + [0.0])
    elif scheduler == "kl_optimal":
        a_min = math.atan(sigma_min)
        a_max = math.atan(sigma_max)
        i = torch.arange(n + 1, dtype=DTYPE)
        sig = torch.tan(i / n * a_min + (1.0 - i / n) * a_max)
    elif scheduler == "align_your_steps":
        sig = torch.tensor([*_loglinear_interp(AYS_SD15_SIGMAS, n), 0.0])
    elif scheduler == "trailing":
        sig = trailing_sigmas(model_wrap.sigmas.to(DTYPE), n)
    else:
        raise ValueError(f"unknown scheduler {scheduler!r}")
    # The WebUI's lists are float32 (torch.FloatTensor, or a float32 model table): keep those values, compute in float64.
    return sig.to(torch.float32).to(DTYPE)


def _loglinear_interp(t_steps: Sequence[float], num_steps: int) -> list[float]:
    """The WebUI's AYS resampling: linear interpolation of log sigma over ``linspace(0, 1)``."""
    if num_steps == len(t_steps):
        return list(t_steps)
    import numpy as np

    xs = np.linspace(0, 1, len(t_steps))
    ys = np.log(np.asarray(t_steps)[::-1])
    new_ys = np.interp(np.linspace(0, 1, num_steps), xs, ys)
    return [float(v) for v in np.exp(new_ys)[::-1]]


def webui_ddim_timesteps(steps: int) -> torch.Tensor:
    """The WebUI's DDIM timesteps: ``clip(range(0, 1000, 1000 // steps) + 1, 0, 999)``, "leading" + 1 (timesteps.py:86-96).

    Ascending; the sampler runs ``len - 1`` model calls from the last entry down to the first (t = 1). t = 999 is never
    visited (paper Sec. 3.3: fatal with ZTSNR).
    """
    return (torch.arange(0, 1000, 1000 // steps) + 1).clamp(0, 999)


def trailing_ddim_timesteps(steps: int) -> torch.Tensor:
    """Trailing timesteps for the WebUI DDIM loop: ``[0, 49, 99, ..., 999]`` for 20 steps (paper Table 2, 0-based).

    The leading 0 makes the last of the ``steps`` model calls land on t = 0 (webui-hooks.md section 5).
    """
    return torch.cat([torch.zeros(1, dtype=torch.long), spaced_timesteps(steps, "trailing").flip(0)])


@dataclasses.dataclass(frozen=True)
class DDIMPlan:
    """A WebUI DDIM run expressed in k-diffusion terms: Euler over ``sigmas`` (VE), VP start and VP output scaling.

    DDIM with eta = 0 is exactly Euler on the VE ODE: ``x_ve' = D + sigma'/sigma (x_ve - D)`` is paper Eq. 21 after
    dividing by ``sqrt(abar')``. The WebUI starts from unit VP noise (``x_ve = sqrt(1 + sigma_0^2) z``) and returns a VP
    latent at ``t = timesteps[0]`` (``x_vp = sqrt(abar_end) x_ve``).
    """

    sigmas: torch.Tensor
    start_std: float
    output_scale: float


def ddim_plan(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> DDIMPlan:
    """:class:`DDIMPlan` for the WebUI DDIM loop over ascending ``timesteps`` with table ``alphas_cumprod``."""
    sig = sigmas_from_alphas_cumprod(alphas_cumprod.to(DTYPE))[timesteps.flip(0)]
    a_end = float(alphas_cumprod[timesteps[0]])
    return DDIMPlan(sig, math.sqrt(1.0 + float(sig[0]) ** 2), math.sqrt(a_end))


def sample_ddim(
    model_wrap,
    x_vp: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    extra_args: dict | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) with the WebUI's loop structure, in the paper's x0 form (Eq. 19-21).

    ``alphas_prev = abar[pad(timesteps[:-1], (1, 0))]``; for ``index = len - 1 .. 1``:
    ``x0 = D(x_vp / sqrt(abar_t); sigma_t)`` (the exact k-diffusion denoiser, i.e. Eq. 19 for a v model) and
    ``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)`` (Eq. 21), which
    never divides by ``sqrt(abar_t)`` and is exact at zero terminal SNR. The WebUI converts v to eps first
    (``predict_eps_from_z_and_v``); in exact arithmetic that is the same update.
    """
    extra_args = {} if extra_args is None else extra_args
    a = alphas_cumprod.to(DTYPE)
    alphas = a[timesteps]
    alphas_prev = a[torch.nn.functional.pad(timesteps[:-1], (1, 0))]
    x = x_vp.to(DTYPE)
    ones = x.new_ones(x.shape[0])
    for index in range(len(timesteps) - 1, 0, -1):
        a_t, a_prev = float(alphas[index]), float(alphas_prev[index])
        sigma_t = math.sqrt((1 - a_t) / a_t)
        x0 = model_wrap(x / math.sqrt(a_t), sigma_t * ones, **extra_args).to(DTYPE)
        x = math.sqrt(a_prev) * x0 + math.sqrt((1 - a_prev) / (1 - a_t)) * (x - math.sqrt(a_t) * x0)
    return x


class BrownianNoiseSampler:
    """Drop-in for k-diffusion's ``BrownianTreeNoiseSampler`` with the same law, sampled lazily and exactly.

    ``noise(sigma, sigma_next) = (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|)`` for one Brownian motion W
    per element, indexed by sigma (the tree's identity ``transform``). New points are drawn from the exact conditional
    law: a random-walk step outside the known range, a Brownian bridge inside it. Overlapping queries (DPM++ SDE asks
    for ``(sigma, sigma_s)`` then ``(sigma, sigma')``) are therefore correlated exactly as with the tree, but without
    its ~30-level bisection per query, which costs minutes on CPU for a batch of images.
    """

    def __init__(self, x: torch.Tensor, generator: torch.Generator) -> None:
        self._shape, self._dtype, self._gen = x.shape, x.dtype, generator
        self._points: dict[float, torch.Tensor] = {}

    def _randn(self) -> torch.Tensor:
        return torch.randn(self._shape, generator=self._gen, dtype=self._dtype)

    def _w(self, t: float) -> torch.Tensor:
        if t in self._points:
            return self._points[t]
        if not self._points:
            w = torch.zeros(self._shape, dtype=self._dtype)
        else:
            below = [s for s in self._points if s < t]
            above = [s for s in self._points if s > t]
            if below and above:  # Brownian bridge between the nearest known points
                a, b = max(below), min(above)
                lam = (t - a) / (b - a)
                mean = (1 - lam) * self._points[a] + lam * self._points[b]
                w = mean + math.sqrt((t - a) * (b - t) / (b - a)) * self._randn()
            else:
                nearest = max(below) if below else min(above)
                w = self._points[nearest] + math.sqrt(abs(t - nearest)) * self._randn()
        self._points[t] = w
        return w

    def __call__(self, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
        """Normalised Brownian increment from ``sigma`` to ``sigma_next`` (``N(0, I)`` marginally)."""
        t0, t1 = float(sigma), float(sigma_next)
        return (self._w(t1) - self._w(t0)) / math.sqrt(abs(t1 - t0))


def _randn_noise_sampler(x: torch.Tensor, generator: torch.Generator):
    def noise_sampler(sigma, sigma_next):  # independent N(0, I) per call (k-diffusion default_noise_sampler)
        del sigma, sigma_next
        return torch.randn(x.shape, generator=generator, dtype=x.dtype)

    return noise_sampler


def run_sampler(
    sampler: str,
    model_wrap,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    seed: int = 0,
    extra_args: dict | None = None,
    brownian_tree: bool = False,
    callback: Callable[[dict], None] | None = None,
    euler_first: bool = False,
) -> torch.Tensor:
    """Run a k-diffusion sampler (``sampler`` in :data:`SAMPLERS`, not DDIM) from ``x_T = noise * sigmas[0]``.

    As the WebUI's txt2img (``x = x * sigmas[0]``, sd_samplers_kdiffusion.py:199). Euler a draws its ancestral noise
    from a generator seeded with ``seed``. DPM++ SDE needs Brownian noise (the WebUI passes k-diffusion's
    ``BrownianTreeNoiseSampler``): :class:`BrownianNoiseSampler`, the same law and much faster on CPU, or with
    ``brownian_tree=True`` the tree itself. ``callback`` is k-diffusion's per-step callback. Everything in float64.
    """
    import k_diffusion.sampling as ks

    extra_args = {} if extra_args is None else extra_args
    sig = sigmas.to(DTYPE)
    x = noise.to(DTYPE) * sig[0]
    kw = {"extra_args": extra_args, "disable": True, "callback": callback}
    if sampler == "Euler":
        return ks.sample_euler(model_wrap, x, sig, **kw)
    if sampler == "Heun":
        # euler_first: as the extension runs Heun under ZTSNR (lib_vpred.sampling.with_euler_first_step)
        heun = with_euler_first_step(ks.sample_heun) if euler_first else ks.sample_heun
        return heun(model_wrap, x, sig, **kw)
    if sampler == "DPM++ 2M":
        return ks.sample_dpmpp_2m(model_wrap, x, sig, **kw)
    if sampler == "Euler a":
        gen = torch.Generator().manual_seed(seed)
        return ks.sample_euler_ancestral(model_wrap, x, sig, noise_sampler=_randn_noise_sampler(x, gen), **kw)
    if sampler == "DPM++ SDE":
        if brownian_tree:
            positive = sig[sig > 0]
            ns = ks.BrownianTreeNoiseSampler(x, positive.min(), positive.max(), seed=seed)
        else:
            ns = BrownianNoiseSampler(x, torch.Generator().manual_seed(seed))
        return ks.sample_dpmpp_sde(model_wrap, x, sig, noise_sampler=ns, **kw)
    raise ValueError(f"unknown k-diffusion sampler {sampler!r} (DDIM: use sample_ddim)")


# =====================================================================================================================
# Exact per-frequency variance propagation (Gaussian model: every step is linear per frequency)
# =====================================================================================================================


def _ancestral(sigma: float, sigma_next: float) -> tuple[float, float]:
    """k-diffusion ``get_ancestral_step`` with eta = 1: ``(sigma_down, sigma_up)``."""
    sigma_up = min(sigma_next, math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def exact_generated_variance(
    sampler: str,
    sigmas: Sequence[float] | torch.Tensor,
    power: torch.Tensor,
    *,
    start_variance: float | None = None,
    output_scale: float = 1.0,
    euler_first: bool = False,
) -> torch.Tensor:
    """Variance per frequency of what ``sampler`` generates with the exact Wiener denoiser of power ``power``.

    The denoiser is ``D = h(sigma) x`` per frequency with ``h = P / (P + sigma^2)`` (zero data mean), so every update
    below is ``x' = a x`` (+ independent or Brownian noise for the stochastic samplers) and the variance propagates in
    closed form from ``start_variance`` (default ``sigmas[0]^2``: the WebUI's ``x_T = noise * sigma_max``). These are
    the update rules of k-diffusion 0.1.1 written out per scalar, independently of its code:

    - Euler / DDIM (eta 0): ``a = h + (1 - h) sigma'/sigma`` (DDIM uses its own sigma list, see :func:`ddim_plan`).
    - Heun: Euler predictor, then ``a = 1 + (sigma' - sigma)/2 ((1 - h)/sigma + (1 - h') a_euler / sigma')``; Euler on
      the last step (sigma' = 0), and with ``euler_first`` on the first step too (the extension's Heun under ZTSNR).
    - DPM++ 2M: ``x' = (sigma'/sigma) x + (1 - sigma'/sigma) D_d`` with ``D_d = (1 + 1/2r) D - 1/2r D_prev``,
      ``r = h_last / h`` in log-sigma steps; first and last steps first order. Tracks ``(x, D_prev)`` gains.
    - Euler a: ``(sigma_d, sigma_u)`` = ancestral step, ``V' = (h + (1 - h) sigma_d/sigma)^2 V + sigma_u^2``.
    - DPM++ SDE (eta 1, r 1/2): two ancestral sub-steps whose Brownian-tree noises share the interval
      ``[sigma_s, sigma]``; correlation ``sqrt((sigma - sigma_s)/(sigma - sigma'))``. Expected variance, exact.

    ``output_scale`` multiplies the final sample (DDIM's VP output). Returns a float64 tensor shaped like ``power``.
    """
    sig = [float(s) for s in torch.as_tensor(sigmas, dtype=DTYPE)]
    p = power.to(DTYPE)

    def h(s: float) -> torch.Tensor:
        return p / (p + s * s)

    var0 = sig[0] ** 2 if start_variance is None else float(start_variance)
    n = len(sig) - 1
    if sampler in ("Euler", "DDIM"):
        gain = torch.ones_like(p)
        for s, s_next in itertools.pairwise(sig):
            hs = h(s)
            gain = gain * (hs + (1 - hs) * (s_next / s))
        var = gain**2 * var0
    elif sampler == "Heun":
        gain = torch.ones_like(p)
        for i, (s, s_next) in enumerate(itertools.pairwise(sig)):
            hs = h(s)
            a_euler = hs + (1 - hs) * (s_next / s)
            euler = s_next == 0 or (euler_first and i == 0)
            a = a_euler if euler else 1 + (s_next - s) / 2 * ((1 - hs) / s + (1 - h(s_next)) * a_euler / s_next)
            gain = gain * a
        var = gain**2 * var0
    elif sampler == "DPM++ 2M":
        gain = torch.ones_like(p)
        old_den: torch.Tensor | None = None
        for i in range(n):
            s, s_next = sig[i], sig[i + 1]
            den = h(s) * gain
            if s_next == 0:
                gain = den
            elif old_den is None:
                gain = (s_next / s) * gain + (1 - s_next / s) * den
            else:
                step = math.log(s / s_next)
                r = math.log(sig[i - 1] / s) / step
                den_d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old_den
                gain = (s_next / s) * gain + (1 - s_next / s) * den_d
            old_den = den
        var = gain**2 * var0
    elif sampler == "Euler a":
        var = torch.full_like(p, var0)
        for s, s_next in itertools.pairwise(sig):
            hs = h(s)
            s_down, s_up = _ancestral(s, s_next)
            a = hs + (1 - hs) * (s_down / s)
            var = a**2 * var + (s_up**2 if s_next > 0 else 0.0)
    elif sampler == "DPM++ SDE":
        var = torch.full_like(p, var0)
        for s, s_next in itertools.pairwise(sig):
            hs = h(s)
            if s_next == 0:
                var = hs**2 * var
                continue
            s_mid = math.sqrt(s * s_next)  # sigma_fn(t + h r) with r = 1/2: the log-midpoint
            d1, u1 = _ancestral(s, s_mid)
            a1 = d1 / s + (1 - d1 / s) * hs  # x_2 = a1 x + u1 n1
            d2, u2 = _ancestral(s, s_next)
            c = (1 - d2 / s) * h(s_mid)  # fac = 1: D_d = D(x_2)
            a = d2 / s + c * a1
            b = c * u1  # coefficient of n1 in x'
            rho = math.sqrt((s - s_mid) / (s - s_next))
            var = a**2 * var + b**2 + u2**2 + 2 * b * u2 * rho
    else:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    return var * output_scale**2
