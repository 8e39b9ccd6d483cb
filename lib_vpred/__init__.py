"""sd-webui-vpred core: zero-terminal-SNR schedules, trailing spacing, v-space CFG rescale, checkpoint detection.

The modules ``schedule``, ``guidance``, ``detect`` and ``params`` are pure: they import only the standard
library, torch, safetensors and yaml, never the WebUI (``modules``) or ``gradio``.
"""

__version__ = "0.1.0"
