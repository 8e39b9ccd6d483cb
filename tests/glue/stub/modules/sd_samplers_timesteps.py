"""modules/sd_samplers_timesteps.py + sd_samplers_timesteps_impl.py + models/diffusion/uni_pc (v1.10.1), re-implemented.

Behaviour kept (our own code, not the WebUI's): leading+1 timesteps ``clip(range(0, 1000, 1000 // steps) + 1)``
(ascending; ``steps + 1`` entries when steps does not divide 1000); the eps wrappers (v converted to eps with
``alphas_cumprod[int(t)]`` read on every call); ``CFGDenoiserTimesteps.alphas`` cached at construction for
``get_pred_x0``; the loops read ``model.inner_model.inner_model.alphas_cumprod`` once; DDIM / DDIM CFG++ / PLMS make
``len - 1`` iterations stepping ``ts[i] -> ts[i - 1]`` (PLMS calls twice in its first one); CFG++ sets
``cond_scale_miltiplier = 1/12.5`` and uses ``last_noise_uncond`` for the direction; UniPC (multistep, data
prediction from eps, bh1/bh2, interpolated log-alpha in continuous time t = (n + 1)/N, ``steps = len(timesteps)``,
img2img ``t_start = ts[-1]/1000 + 1/1000``); ``sample_img2img`` noises at ``timesteps[t_enc]`` with
``shared.sd_model.alphas_cumprod`` and samples ``timesteps[:t_enc]``; the loop's keyword arguments are chosen by
``inspect.signature(self.func)`` ("timesteps", "is_img2img", "eta"). Not kept: tqdm, ``vary_coeff``.
"""

import inspect

import torch
from modules import sd_samplers_cfg_denoiser, sd_samplers_common, shared
from modules.shared import opts


class CompVisTimestepsDenoiser(torch.nn.Module):
    def __init__(self, model, *args, **kwargs):
        super().__init__()
        self.inner_model = model

    def forward(self, input, timesteps, **kwargs):
        return self.inner_model.apply_model(input, timesteps, **kwargs)


class CompVisTimestepsVDenoiser(torch.nn.Module):
    def __init__(self, model, *args, **kwargs):
        super().__init__()
        self.inner_model = model

    def predict_eps_from_z_and_v(self, x_t, t, v):
        table = self.inner_model.alphas_cumprod
        idx = t.to(torch.int)
        return table.sqrt()[idx][:, None, None, None] * v + (1 - table).sqrt()[idx][:, None, None, None] * x_t

    def forward(self, input, timesteps, **kwargs):
        v = self.inner_model.apply_model(input, timesteps, **kwargs)
        return self.predict_eps_from_z_and_v(input, timesteps, v)


class CFGDenoiserTimesteps(sd_samplers_cfg_denoiser.CFGDenoiser):
    def __init__(self, sampler):
        super().__init__(sampler)
        self.alphas = shared.sd_model.alphas_cumprod
        self.mask_before_denoising = True
        self.need_last_noise_uncond = False
        self.last_noise_uncond = None

    def combine_denoised(self, x_out, conds_list, uncond, cond_scale):
        # sd_samplers_cfg_denoiser.py:281-282 records this in forward(), right before combining (the stand-in
        # CFGDenoiser has no hook there, so it is done at the same point from here)
        if self.need_last_noise_uncond:
            self.last_noise_uncond = torch.clone(x_out[-uncond.shape[0] :])
        return super().combine_denoised(x_out, conds_list, uncond, cond_scale)

    def get_pred_x0(self, x_in, x_out, sigma):
        a_t = self.alphas[sigma.to(dtype=int)][:, None, None, None]
        return (x_in - (1 - a_t).sqrt() * x_out) / a_t.sqrt()

    @property
    def inner_model(self):
        if self.model_wrap is None:
            cls = CompVisTimestepsVDenoiser if shared.sd_model.parameterization == "v" else CompVisTimestepsDenoiser
            self.model_wrap = cls(shared.sd_model)
        return self.model_wrap


# --- loops (sd_samplers_timesteps_impl.py) ----------------------------------------------------------------------------


def _tables(model, timesteps, x):
    table = model.inner_model.inner_model.alphas_cumprod
    a = table[timesteps]
    a_prev = table[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    return a, a_prev


def _ddim_like(model, x, timesteps, extra_args, callback, eta, use_uncond_direction):
    a_all, a_prev_all = _tables(model, timesteps, x)
    sig_all = (
        eta
        * ((1 - a_prev_all.cpu()) / (1 - a_all.cpu().double()) * (1 - a_all.cpu().double() / a_prev_all.cpu())).sqrt()
    )
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones(x.shape[0])
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, **extra_args)
        direction = model.last_noise_uncond if use_uncond_direction else e_t
        a_t = a_all[index].item() * s_x
        a_prev = a_prev_all[index].item() * s_x
        sigma_t = sig_all[index].item() * s_x
        pred_x0 = (x - (1 - a_all[index]).sqrt().item() * s_x * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * direction
        noise = sigma_t * torch.randn_like(x)
        x = a_prev.sqrt() * pred_x0 + dir_xt + noise
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x


@torch.no_grad()
def ddim(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    return _ddim_like(model, x, timesteps, extra_args, callback, eta, False)


@torch.no_grad()
def ddim_cfgpp(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    model.cond_scale_miltiplier = 1 / 12.5
    model.need_last_noise_uncond = True
    return _ddim_like(model, x, timesteps, extra_args, callback, eta, True)


@torch.no_grad()
def plms(model, x, timesteps, extra_args=None, callback=None, disable=None):
    a_all, a_prev_all = _tables(model, timesteps, x)
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    history = []

    def transfer(cur, e, index):
        a_t = a_all[index].item() * s_x
        a_prev = a_prev_all[index].item() * s_x
        x0 = (cur - (1 - a_all[index]).sqrt().item() * s_x * e) / a_t.sqrt()
        return a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * e, x0

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        t_now = timesteps[index].item() * s_in
        t_next = timesteps[max(index - 1, 0)].item() * s_in
        e_t = model(x, t_now, **extra_args)
        if not history:
            x_mid, _ = transfer(x, e_t, index)
            e_next = model(x_mid, t_next, **extra_args)
            e_use = (e_t + e_next) / 2
        elif len(history) == 1:
            e_use = (3 * e_t - history[-1]) / 2
        elif len(history) == 2:
            e_use = (23 * e_t - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            e_use = (55 * e_t - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        x_new, x0 = transfer(x, e_use, index)
        history.append(e_t)
        if len(history) >= 4:
            history.pop(0)
        x = x_new
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": x0})
    return x


class _VPSchedule:
    """uni_pc.NoiseScheduleVP('discrete'): log alpha = 0.5 log abar at t = (n + 1)/N, piecewise linear in t."""

    def __init__(self, alphas_cumprod):
        self.log_alpha_array = 0.5 * torch.log(alphas_cumprod).reshape(-1)
        self.total_N = self.log_alpha_array.shape[0]
        self.t_array = torch.linspace(0.0, 1.0, self.total_N + 1)[1:].to(self.log_alpha_array)

    @staticmethod
    def _interp(x, xp, yp):
        k = torch.searchsorted(xp.contiguous(), x.contiguous()).clamp(1, xp.shape[0] - 1)
        x0, x1, y0, y1 = xp[k - 1], xp[k], yp[k - 1], yp[k]
        return y0 + (x - x0) * (y1 - y0) / (x1 - x0)

    def marginal_log_mean_coeff(self, t):
        return self._interp(t.to(self.t_array), self.t_array, self.log_alpha_array)

    def marginal_alpha(self, t):
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t):
        return torch.sqrt(1.0 - torch.exp(2.0 * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t):
        lm = self.marginal_log_mean_coeff(t)
        return lm - 0.5 * torch.log(1.0 - torch.exp(2.0 * lm))

    def inverse_lambda(self, lamb):
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lamb), -2.0 * lamb)
        return self._interp(log_alpha, self.log_alpha_array.flip(0), self.t_array.flip(0))


class _UniPC:
    def __init__(self, cfg_model, extra_args, callback, ns, variant):
        self.cfg_model = cfg_model
        self.extra_args = extra_args
        self.callback = callback
        self.ns = ns
        self.variant = variant
        self.index = 0

    def data_prediction(self, x, t):
        t_input = (t - 1.0 / self.ns.total_N) * 1000.0
        eps = self.cfg_model(x, t_input, **self.extra_args)
        alpha_t = self.ns.marginal_alpha(t)[:, None, None, None]
        sigma_t = self.ns.marginal_std(t)[:, None, None, None]
        return (x - sigma_t * eps) / alpha_t

    def after_update(self, x, model_x):
        if self.callback is not None:
            self.callback({"x": x, "i": self.index, "sigma": 0, "sigma_hat": 0, "denoised": model_x})
        self.index += 1

    def time_steps(self, skip_type, t_T, t_0, n, device):
        if skip_type == "logSNR":
            lam_T = self.ns.marginal_lambda(torch.tensor([t_T]))
            lam_0 = self.ns.marginal_lambda(torch.tensor([t_0]))
            return self.ns.inverse_lambda(torch.linspace(lam_T.item(), lam_0.item(), n + 1))
        if skip_type == "time_uniform":
            return torch.linspace(t_T, t_0, n + 1)
        if skip_type == "time_quadratic":
            return torch.linspace(t_T**0.5, t_0**0.5, n + 1).pow(2)
        raise ValueError(skip_type)

    def update(self, x, model_prev, t_prev, t, order, use_corrector):
        ns = self.ns
        t_p0 = t_prev[-1]
        lam_p0 = ns.marginal_lambda(t_p0)
        lam_t = ns.marginal_lambda(t)
        m0 = model_prev[-1]
        sig_p0, sig_t = ns.marginal_std(t_p0), ns.marginal_std(t)
        alpha_t = torch.exp(ns.marginal_log_mean_coeff(t))
        h = lam_t - lam_p0
        rks, d1s = [], []
        for i in range(1, order):
            rk = ((ns.marginal_lambda(t_prev[-(i + 1)]) - lam_p0) / h)[0]
            rks.append(rk)
            d1s.append((model_prev[-(i + 1)] - m0) / rk)
        rks.append(1.0)
        rks = torch.tensor(rks)
        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        rows, b = [], []
        fact = 1
        for i in range(1, order + 1):
            rows.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * fact / b_h)
            fact *= i + 1
            h_phi_k = h_phi_k / hh - 1 / fact
        rows = torch.stack(rows)
        b = torch.tensor(b)
        col = (None, None, None)
        base = (sig_t / sig_p0)[(...,) + col] * x - (alpha_t * h_phi_1)[(...,) + col] * m0
        res = 0
        if d1s:
            stacked = torch.stack(d1s, dim=1)
            rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(rows[:-1, :-1], b[:-1])
            res = torch.einsum("k,bkchw->bchw", rhos_p.to(stacked), stacked)
        x_t = base - (alpha_t * b_h)[(...,) + col] * res
        model_t = None
        if use_corrector:
            rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(rows, b)
            model_t = self.data_prediction(x_t, t)
            corr = 0
            if d1s:
                corr = torch.einsum("k,bkchw->bchw", rhos_c[:-1].to(stacked), stacked)
            x_t = base - (alpha_t * b_h)[(...,) + col] * (corr + rhos_c[-1].to(x) * (model_t - m0))
        return x_t, model_t

    def sample(self, x, steps, t_start, skip_type, order, lower_order_final):
        t_0 = 1.0 / self.ns.total_N
        t_T = 1.0 if t_start is None else float(t_start)
        assert steps >= order, "UniPC order must be < sampling steps"
        ts = self.time_steps(skip_type, t_T, t_0, steps, x.device)
        vec = ts[0].expand(x.shape[0])
        model_prev = [self.data_prediction(x, vec)]
        t_prev = [vec]
        for init_order in range(1, order):
            vec = ts[init_order].expand(x.shape[0])
            x, m = self.update(x, model_prev, t_prev, vec, init_order, True)
            self.after_update(x, m)
            model_prev.append(m)
            t_prev.append(vec)
        for step in range(order, steps + 1):
            vec = ts[step].expand(x.shape[0])
            step_order = min(order, steps + 1 - step) if lower_order_final else order
            x, m = self.update(x, model_prev, t_prev, vec, step_order, step != steps)
            self.after_update(x, m)
            for i in range(order - 1):
                t_prev[i] = t_prev[i + 1]
                model_prev[i] = model_prev[i + 1]
            t_prev[-1] = vec
            if step < steps:
                model_prev[-1] = m
        return x


def unipc(model, x, timesteps, extra_args=None, callback=None, disable=None, is_img2img=False):
    table = model.inner_model.inner_model.alphas_cumprod
    ns = _VPSchedule(table)
    t_start = timesteps[-1] / 1000 + 1 / 1000 if is_img2img else None
    solver = _UniPC(model, extra_args or {}, callback, ns, getattr(opts, "uni_pc_variant", "bh1"))
    return solver.sample(
        x,
        len(timesteps),
        t_start,
        getattr(opts, "uni_pc_skip_type", "time_uniform"),
        getattr(opts, "uni_pc_order", 3),
        getattr(opts, "uni_pc_lower_order_final", True),
    )


# --- the sampler ------------------------------------------------------------------------------------------------------


class CompVisSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model):
        super().__init__(funcname)
        self.eta_option_field = "eta_ddim"
        self.eta_infotext_field = "Eta DDIM"
        self.eta_default = 0.0
        self.model_wrap_cfg = CFGDenoiserTimesteps(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_timesteps(self, p, steps):
        discard = self.config is not None and self.config.options.get("discard_next_to_last_sigma", False)
        if opts.always_discard_next_to_last_sigma and not discard:
            discard = True
            p.extra_generation_params["Discard penultimate sigma"] = True
        steps += 1 if discard else 0
        return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)

    def _set_args(self, p, conditioning, unconditional_conditioning, image_conditioning):
        self.sampler_extra_args = {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": self.s_min_uncond,
        }

    def sample_img2img(
        self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None
    ):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        timesteps = self.get_timesteps(p, steps)
        timesteps_sched = timesteps[:t_enc]
        table = shared.sd_model.alphas_cumprod
        s_a = torch.sqrt(table[timesteps[t_enc]])
        s_1a = torch.sqrt(1 - table[timesteps[t_enc]])
        xi = x * s_a + noise * s_1a
        if opts.img2img_extra_noise > 0:
            p.extra_generation_params["Extra noise"] = opts.img2img_extra_noise
            xi += noise * opts.img2img_extra_noise * s_a  # (on_extra_noise callback not modelled)
        kwargs = self.initialize(p)
        parameters = inspect.signature(self.func).parameters
        if "timesteps" in parameters:
            kwargs["timesteps"] = timesteps_sched
        if "is_img2img" in parameters:
            kwargs["is_img2img"] = True
        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        self._set_args(p, conditioning, unconditional_conditioning, image_conditioning)
        return self.launch_sampling(
            t_enc + 1,
            lambda: self.func(
                self.model_wrap_cfg,
                xi,
                extra_args=self.sampler_extra_args,
                disable=False,
                callback=self.callback_state,
                **kwargs,
            ),
        )

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        timesteps = self.get_timesteps(p, steps)
        kwargs = self.initialize(p)
        if "timesteps" in inspect.signature(self.func).parameters:
            kwargs["timesteps"] = timesteps
        self.last_latent = x
        self._set_args(p, conditioning, unconditional_conditioning, image_conditioning)
        return self.launch_sampling(
            steps,
            lambda: self.func(
                self.model_wrap_cfg,
                x,
                extra_args=self.sampler_extra_args,
                disable=False,
                callback=self.callback_state,
                **kwargs,
            ),
        )


samplers_timesteps = [
    ("DDIM", ddim, ["ddim"], {}),
    ("DDIM CFG++", ddim_cfgpp, ["ddim_cfgpp"], {}),
    ("PLMS", plms, ["plms"], {}),
    ("UniPC", unipc, ["unipc"], {}),
]

samplers_data_timesteps = [
    sd_samplers_common.SamplerData(
        label, lambda model, funcname=funcname: CompVisSampler(funcname, model), aliases, opts_
    )
    for label, funcname, aliases, opts_ in samplers_timesteps
]
