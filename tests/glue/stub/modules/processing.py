"""modules/processing.py (v1.10.1), the control flow the extension's hooks run in.

``process_images``: ``before_process`` -> override settings (checkpoint switch) -> ``process_images_inner``, then the
overridden options are restored in ``finally``. ``process_images_inner``: ``process`` -> ``p.init`` -> per batch:
``reload_model_weights`` -> conds -> ``apply_alpha_schedule_override`` -> ``p.sample`` -> ... -> ``postprocess``
(no try/finally around sampling: after an exception ``postprocess`` does not run). txt2img creates its sampler in
``sample()`` and calls ``process_before_every_sampling`` right before sampling; the hires pass creates a new sampler
and calls ``before_hr`` then ``process_before_every_sampling``; img2img creates its sampler in ``init()``.
"""

import dataclasses
import re

import torch
from modules import sd_models, sd_samplers, shared
from modules.prompt_parser import ComposableScheduledPromptConditioning, MulticondLearnedConditioning
from modules.shared import opts, state

opt_C = 4
opt_f = 8


def parse_and_prompt(prompt):
    """``"a AND b:0.5"`` -> [("a", 1.0), ("b", 0.5)] (prompt_parser.get_multicond_prompt_list, reduced)."""
    parts = []
    for part in re.split(r"\bAND\b", prompt):
        m = re.fullmatch(r"\s*(.*?)\s*(?::\s*([-+]?\d+(?:\.\d+)?))?\s*", part)
        parts.append((m.group(1), float(m.group(2)) if m.group(2) else 1.0))
    return parts


@dataclasses.dataclass
class Processed:
    images: list
    infotexts: list
    extra_generation_params: dict


class StableDiffusionProcessing:
    def __init__(
        self,
        sd_model=None,
        prompt="",
        negative_prompt="",
        seed=1,
        steps=20,
        cfg_scale=7.0,
        width=64,
        height=64,
        batch_size=1,
        n_iter=1,
        sampler_name="Euler",
        scheduler=None,
        override_settings=None,
        override_settings_restore_afterwards=True,
        eta=None,
        refiner_checkpoint=None,
        refiner_switch_at=None,
    ):
        self.sd_model = sd_model
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.seed = seed
        self.steps = steps
        self.cfg_scale = cfg_scale
        self.width = width
        self.height = height
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.sampler_name = sampler_name
        self.scheduler = scheduler
        self.hr_scheduler = None
        self.override_settings = dict(override_settings or {})
        self.override_settings_restore_afterwards = override_settings_restore_afterwards
        self.eta = eta
        self.extra_generation_params = {}
        self.sampler_noise_scheduler_override = None
        self.is_hr_pass = False
        self.scripts = None
        self.script_args = ()
        self.is_api = False
        self.sampler = None
        self.s_min_uncond = 0.0
        self.refiner_checkpoint_info = (
            sd_models.checkpoint_aliases.get(refiner_checkpoint) if refiner_checkpoint else None
        )
        self.refiner_switch_at = refiner_switch_at

    # conditioning -----------------------------------------------------------------------------------------------
    def setup_conds(self):
        model = shared.sd_model
        batch = []
        for prompt in self.prompts:
            batch.append(
                [
                    ComposableScheduledPromptConditioning(model.get_learned_conditioning([text])[0], weight)
                    for text, weight in parse_and_prompt(prompt)
                ]
            )
        self.c = MulticondLearnedConditioning(batch)
        self.uc = model.get_learned_conditioning(self.negative_prompts)

    def get_conds(self):
        return self.c, self.uc

    def noise(self, shape):
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in self.seeds])

    def latent_shape(self):
        return (opt_C, self.height // opt_f, self.width // opt_f)


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    def __init__(
        self,
        enable_hr=False,
        denoising_strength=0.7,
        hr_scale=2.0,
        hr_second_pass_steps=0,
        hr_sampler_name=None,
        hr_checkpoint_name=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.enable_hr = enable_hr
        self.denoising_strength = denoising_strength
        self.hr_scale = hr_scale
        self.hr_second_pass_steps = hr_second_pass_steps
        self.hr_sampler_name = hr_sampler_name
        self.hr_checkpoint_info = sd_models.checkpoint_aliases.get(hr_checkpoint_name) if hr_checkpoint_name else None

    def init(self, all_prompts, all_seeds, all_subseeds):
        if self.enable_hr:
            self.extra_generation_params["Denoising strength"] = self.denoising_strength

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.noise(self.latent_shape())
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                p=self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning
            )
        samples = self.sampler.sample(
            self, x, conditioning, unconditional_conditioning, image_conditioning=x.new_zeros(x.shape[0], 5, 1, 1)
        )
        if not self.enable_hr:
            return samples
        return self.sample_hr_pass(samples)

    def sample_hr_pass(self, samples):
        self.is_hr_pass = True
        if self.hr_checkpoint_info is not None:
            sd_models.reload_model_weights(info=self.hr_checkpoint_info)
            self.sd_model = shared.sd_model
        self.sampler = sd_samplers.create_sampler(self.hr_sampler_name or self.sampler_name, self.sd_model)
        size = (int(samples.shape[2] * self.hr_scale), int(samples.shape[3] * self.hr_scale))
        samples = torch.nn.functional.interpolate(samples, size=size, mode="bilinear")
        noise = self.noise(samples.shape[1:])
        if self.scripts is not None:
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=self.c, uc=self.uc)
        samples = self.sampler.sample_img2img(
            self,
            samples,
            noise,
            self.c,
            self.uc,
            steps=self.hr_second_pass_steps or self.steps,
            image_conditioning=samples.new_zeros(samples.shape[0], 5, 1, 1),
        )
        self.sampler = None
        self.is_hr_pass = False
        return samples


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    def __init__(self, init_latent=None, denoising_strength=0.75, image_cfg_scale=None, **kwargs):
        super().__init__(**kwargs)
        self.init_latent_source = init_latent
        self.denoising_strength = denoising_strength
        self.image_cfg_scale = image_cfg_scale

    def init(self, all_prompts, all_seeds, all_subseeds):
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        self.image_cfg_scale = self.image_cfg_scale if shared.sd_model.cond_stage_key == "edit" else None
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        self.init_latent = self.init_latent_source

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        x = self.noise(self.init_latent.shape[1:])
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                p=self, x=self.init_latent, noise=x, c=conditioning, uc=unconditional_conditioning
            )
        return self.sampler.sample_img2img(
            self,
            self.init_latent,
            x,
            conditioning,
            unconditional_conditioning,
            image_conditioning=x.new_zeros(x.shape[0], 5, 1, 1),
        )


def process_images(p):
    if p.scripts is not None:
        p.scripts.before_process(p)
    stored_opts = {k: opts.data[k] for k in p.override_settings if k in opts.data}
    try:
        if sd_models.checkpoint_aliases.get(p.override_settings.get("sd_model_checkpoint")) is None:
            p.override_settings.pop("sd_model_checkpoint", None)
            sd_models.reload_model_weights()
        for k, v in p.override_settings.items():
            opts.set(k, v, is_api=True, run_callbacks=False)
            if k == "sd_model_checkpoint":
                sd_models.reload_model_weights()
        p.sd_model = shared.sd_model
        return process_images_inner(p)
    finally:
        if p.override_settings_restore_afterwards:
            for k, v in stored_opts.items():
                setattr(opts, k, v)


def process_images_inner(p):
    # setup_prompts (processing.py:418-432): a list prompt gives one prompt per image
    if isinstance(p.prompt, list):
        p.all_prompts = list(p.prompt)
    elif isinstance(p.negative_prompt, list):
        p.all_prompts = [p.prompt] * len(p.negative_prompt)
    else:
        p.all_prompts = [p.prompt] * (p.batch_size * p.n_iter)
    if isinstance(p.negative_prompt, list):
        p.all_negative_prompts = list(p.negative_prompt)
    else:
        p.all_negative_prompts = [p.negative_prompt] * len(p.all_prompts)
    p.all_seeds = [p.seed + i for i in range(len(p.all_prompts))]
    if p.scripts is not None:
        p.scripts.process(p)
    images = []
    with torch.no_grad():
        p.init(p.all_prompts, p.all_seeds, None)
        for n in range(p.n_iter):
            p.iteration = n
            if state.interrupted:
                break
            sd_models.reload_model_weights()
            p.sd_model = shared.sd_model
            p.prompts = p.all_prompts[n * p.batch_size : (n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size : (n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size : (n + 1) * p.batch_size]
            p.setup_conds()
            sd_models.apply_alpha_schedule_override(p.sd_model, p)
            samples = p.sample(
                conditioning=p.c,
                unconditional_conditioning=p.uc,
                seeds=p.seeds,
                subseeds=None,
                subseed_strength=0,
                prompts=p.prompts,
            )
            images.extend(samples)
    infotext = ", ".join(f"{k}: {v}" for k, v in p.extra_generation_params.items() if v is not None)
    processed = Processed(images, [infotext] * len(images), dict(p.extra_generation_params))
    if p.scripts is not None:
        p.scripts.postprocess(p, processed)
    return processed
