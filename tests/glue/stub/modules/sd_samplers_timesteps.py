"""modules/sd_samplers_timesteps.py (v1.10.1), DDIM only: leading+1 timesteps, eps wrapper (v converted to eps)."""

import torch
from modules import sd_samplers_cfg_denoiser, sd_samplers_common, shared
from modules.shared import opts


class CompVisTimestepsDenoiser(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.inner_model = model

    def forward(self, input, timesteps, **kwargs):
        return self.inner_model.apply_model(input, timesteps, **kwargs)


class CompVisTimestepsVDenoiser(CompVisTimestepsDenoiser):
    def forward(self, input, timesteps, **kwargs):
        v = self.inner_model.apply_model(input, timesteps, **kwargs)
        a = self.inner_model.alphas_cumprod[timesteps.to(torch.int)][:, None, None, None]
        return a.sqrt() * v + (1 - a).sqrt() * input


class CFGDenoiserTimesteps(sd_samplers_cfg_denoiser.CFGDenoiser):
    def __init__(self, sampler):
        super().__init__(sampler)
        self.alphas = shared.sd_model.alphas_cumprod
        self.mask_before_denoising = True

    @property
    def inner_model(self):
        if self.model_wrap is None:
            cls = CompVisTimestepsVDenoiser if shared.sd_model.parameterization == "v" else CompVisTimestepsDenoiser
            self.model_wrap = cls(shared.sd_model)
        return self.model_wrap


@torch.no_grad()
def ddim(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    # sd_samplers_timesteps_impl.py:12-40 with eta = 0: len(timesteps) - 1 model calls, eps form.
    alphas_cumprod = model.inner_model.inner_model.alphas_cumprod
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    s_in = x.new_ones(x.shape[0])
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, **extra_args)
        a_t = alphas[index].item()
        a_prev = alphas_prev[index].item()
        pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t**0.5
        x = a_prev**0.5 * pred_x0 + (1.0 - a_prev) ** 0.5 * e_t
        if callback is not None:
            callback({"x": x, "i": i})
    return x


class CompVisSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model):
        super().__init__(funcname)
        self.eta_option_field = "eta_ddim"
        self.eta_default = 0.0
        self.model_wrap_cfg = CFGDenoiserTimesteps(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_timesteps(self, p, steps):
        discard = self.config is not None and self.config.options.get("discard_next_to_last_sigma", False)
        if opts.always_discard_next_to_last_sigma and not discard:
            discard = True
        steps += 1 if discard else 0
        return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)

    def _args(self, p, conditioning, unconditional_conditioning, image_conditioning):
        self.sampler_extra_args = {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": self.s_min_uncond,
        }
        return self.sampler_extra_args

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        timesteps = self.get_timesteps(p, steps)
        kw = self.initialize(p)
        kw.pop("eta", None)
        self.last_latent = x
        args = self._args(p, conditioning, unconditional_conditioning, image_conditioning)
        return self.launch_sampling(
            steps, lambda: self.func(self.model_wrap_cfg, x, timesteps, extra_args=args, callback=self.callback_state)
        )

    def sample_img2img(
        self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None
    ):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        timesteps = self.get_timesteps(p, steps)
        timesteps_sched = timesteps[:t_enc]
        alphas_cumprod = shared.sd_model.alphas_cumprod
        xi = x * alphas_cumprod[timesteps[t_enc]].sqrt() + noise * (1 - alphas_cumprod[timesteps[t_enc]]).sqrt()
        self.initialize(p)
        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        args = self._args(p, conditioning, unconditional_conditioning, image_conditioning)
        return self.launch_sampling(
            t_enc + 1,
            lambda: self.func(self.model_wrap_cfg, xi, timesteps_sched, extra_args=args, callback=self.callback_state),
        )


samplers_data_timesteps = [
    sd_samplers_common.SamplerData("DDIM", lambda model: CompVisSampler(ddim, model), [], {}),
]
