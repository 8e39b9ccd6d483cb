"""modules/sd_samplers_cfg_denoiser.py (v1.10.1): classifier-free guidance around the k-diffusion/timestep wrapper.

``forward`` keeps the real order: refiner switch, multicond reconstruction, batch layout (every cond row in image
order, then one uncond row per image, and a third block for edit models), ``cfg_denoiser_callback`` whose x/sigma/conds
are read back, skip-uncond (``skip_early_cond``), one batched inner-model call, the fake uncond, ``combine_denoised``
(or the edit-model combine), the inpainting blend after denoising, ``cfg_after_cfg_callback``, ``step += 1``.
"""

import torch
from modules import prompt_parser, sd_samplers_common, shared
from modules.script_callbacks import (
    AfterCFGCallbackParams,
    CFGDenoiserParams,
    cfg_after_cfg_callback,
    cfg_denoiser_callback,
)
from modules.shared import state


def catenate_conds(conds):
    return torch.cat(conds)


class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler):
        super().__init__()
        self.model_wrap = None
        self.mask = None
        self.nmask = None
        self.init_latent = None
        self.steps = None
        self.total_steps = None
        self.step = 0
        self.image_cfg_scale = None
        self.sampler = sampler
        self.p = None
        self.cond_scale_miltiplier = 1.0
        self.mask_before_denoising = False

    @property
    def inner_model(self):
        raise NotImplementedError()

    def combine_denoised(self, x_out, conds_list, uncond, cond_scale):
        denoised_uncond = x_out[-uncond.shape[0] :]
        denoised = torch.clone(denoised_uncond)
        for i, conds in enumerate(conds_list):
            for cond_index, weight in conds:
                denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * cond_scale)
        return denoised

    def combine_denoised_for_edit_model(self, x_out, cond_scale):
        out_cond, out_img_cond, out_uncond = x_out.chunk(3)
        return out_uncond + cond_scale * (out_cond - out_img_cond) + self.image_cfg_scale * (out_img_cond - out_uncond)

    def get_pred_x0(self, x_in, x_out, sigma):
        return x_out

    def update_inner_model(self):
        self.model_wrap = None
        c, uc = self.p.get_conds()
        self.sampler.sampler_extra_args["cond"] = c
        self.sampler.sampler_extra_args["uncond"] = uc

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException

        if sd_samplers_common.apply_refiner(self, sigma):
            cond = self.sampler.sampler_extra_args["cond"]
            uncond = self.sampler.sampler_extra_args["uncond"]

        is_edit_model = (
            shared.sd_model.cond_stage_key == "edit"
            and self.image_cfg_scale is not None
            and self.image_cfg_scale != 1.0
        )
        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)

        def apply_blend(current_latent):
            return current_latent * self.nmask + self.init_latent * self.mask

        if self.mask_before_denoising and self.mask is not None:
            x = apply_blend(x)

        batch_size = len(conds_list)
        repeats = [len(conds_list[i]) for i in range(batch_size)]
        image_uncond = image_cond

        def make_condition_dict(c_crossattn, c_concat):
            return {"c_crossattn": [c_crossattn], "c_concat": [c_concat]}

        def rows(t, extra):
            return torch.cat([torch.stack([t[i] for _ in range(n)]) for i, n in enumerate(repeats)] + extra)

        if not is_edit_model:
            x_in = rows(x, [x])
            sigma_in = rows(sigma, [sigma])
            image_cond_in = rows(image_cond, [image_uncond])
        else:
            x_in = rows(x, [x, x])
            sigma_in = rows(sigma, [sigma, sigma])
            image_cond_in = rows(image_cond, [image_uncond, torch.zeros_like(self.init_latent)])

        denoiser_params = CFGDenoiserParams(
            x_in, image_cond_in, sigma_in, state.sampling_step, state.sampling_steps, tensor, uncond, self
        )
        cfg_denoiser_callback(denoiser_params)
        x_in = denoiser_params.x
        image_cond_in = denoiser_params.image_cond
        sigma_in = denoiser_params.sigma
        tensor = denoiser_params.text_cond
        uncond = denoiser_params.text_uncond
        skip_uncond = False

        if shared.opts.skip_early_cond != 0.0 and self.step / self.total_steps <= shared.opts.skip_early_cond:
            skip_uncond = True
            self.p.extra_generation_params["Skip Early CFG"] = shared.opts.skip_early_cond

        if skip_uncond:
            x_in = x_in[:-batch_size]
            sigma_in = sigma_in[:-batch_size]

        if is_edit_model:
            cond_in = catenate_conds([tensor, uncond, uncond])
        elif skip_uncond:
            cond_in = tensor
        else:
            cond_in = catenate_conds([tensor, uncond])
        x_out = self.inner_model(x_in, sigma_in, cond=make_condition_dict(cond_in, image_cond_in))

        denoised_image_indexes = [x[0][0] for x in conds_list]
        if skip_uncond:
            fake_uncond = torch.cat([x_out[i : i + 1] for i in denoised_image_indexes])
            x_out = torch.cat([x_out, fake_uncond])

        if is_edit_model:
            denoised = self.combine_denoised_for_edit_model(x_out, cond_scale * self.cond_scale_miltiplier)
        elif skip_uncond:
            denoised = self.combine_denoised(x_out, conds_list, uncond, 1.0)
        else:
            denoised = self.combine_denoised(x_out, conds_list, uncond, cond_scale * self.cond_scale_miltiplier)

        if not self.mask_before_denoising and self.mask is not None:
            denoised = apply_blend(denoised)

        self.sampler.last_latent = self.get_pred_x0(
            torch.cat([x_in[i : i + 1] for i in denoised_image_indexes]),
            torch.cat([x_out[i : i + 1] for i in denoised_image_indexes]),
            sigma,
        )
        after = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after)
        denoised = after.x
        self.step += 1
        return denoised
