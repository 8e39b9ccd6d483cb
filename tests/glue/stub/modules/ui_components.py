"""modules/ui_components.py: ``InputAccordion``, a hidden checkbox (the input) driving an accordion."""

import gradio as gr


class InputAccordion(gr.Checkbox):
    def __init__(self, value, **kwargs):
        self.accordion_id = kwargs.get("elem_id") or "input-accordion"
        super().__init__(value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        self.accordion = gr.Accordion(label=kwargs.get("label", "Accordion"), open=value, elem_id=self.accordion_id)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)
