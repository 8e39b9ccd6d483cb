"""WebUI glue (imports ``modules`` and ``gradio``). The pure core lives one level up and never imports this."""
