"""A thin stand-in of the AUTOMATIC1111 WebUI v1.10.1 ``modules`` package, for the glue test tier.

Only the surface sd-webui-vpred touches is here, written from the v1.10.1 source's behaviour (file:line references in
each module) — never copied from it. What it keeps faithful: the order of script hooks per pass, the CFGDenoiser
batch layout (all cond rows, then one uncond row per image), the on_cfg_denoiser callback and ``combine_denoised``,
``KDiffusionSampler`` building its k-diffusion wrapper from ``shared.sd_model`` at construction and honouring
``p.sampler_noise_scheduler_override``, img2img step slicing, ``apply_alpha_schedule_override``, and that the WebUI
only logs exceptions raised in script hooks and callbacks. Sampling runs the real k-diffusion samplers.
"""
