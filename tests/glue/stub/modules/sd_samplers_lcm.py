"""modules/sd_samplers_lcm.py: ``LCMSampler`` subclasses ``KDiffusionSampler`` but is eps-only."""

from modules.sd_samplers_kdiffusion import KDiffusionSampler


class LCMSampler(KDiffusionSampler):
    pass
