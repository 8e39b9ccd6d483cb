"""modules/scripts.py (v1.10.1): ``Script``, ``AlwaysVisible`` and the parts of ``ScriptRunner`` the hooks go through.

Like the real runner (scripts.py:820-842 and siblings) every hook call is wrapped: an exception is reported and the
generation goes on.
"""

import re
from collections import namedtuple

from modules import errors

AlwaysVisible = object()

# scripts.py:379-381: every loaded script class with its module (the XYZ script's module is "xyz_grid.py").
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data = []


class Script:
    name = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    group = None
    infotext_fields = None
    paste_field_names = None
    api_info = None
    setup_for_ui_only = False

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def elem_id(self, item_id):
        # scripts.py:334-342
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def before_hr(self, p, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def after_component(self, component, **kwargs):
        pass


class ScriptRunner:
    def __init__(self, is_img2img=False):
        self.is_img2img = is_img2img
        self.alwayson_scripts = []
        self.inputs = [None]  # inputs[0] is the "Script" dropdown
        self.infotext_fields = []
        self.paste_field_names = []

    def add_script(self, script_class, filename):
        script = script_class()
        script.filename = filename
        script.is_txt2img = not self.is_img2img
        script.is_img2img = self.is_img2img
        if script.show(self.is_img2img) is AlwaysVisible:
            script.alwayson = True
            self.alwayson_scripts.append(script)
        script.name = script.title().lower()
        return script

    def setup_ui(self):
        for script in self.alwayson_scripts:
            script.args_from = len(self.inputs)
            controls = script.ui(self.is_img2img) or []
            self.inputs.extend(controls)
            script.args_to = len(self.inputs)
            if script.infotext_fields is not None:
                self.infotext_fields += script.infotext_fields
            if script.paste_field_names is not None:
                self.paste_field_names += script.paste_field_names

    def _run(self, method, p, *extra, **kwargs):
        for script in self.alwayson_scripts:
            try:
                args = p.script_args[script.args_from : script.args_to]
                getattr(script, method)(p, *extra, *args, **kwargs)
            except Exception:
                errors.report(f"Error running {method}: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._run("before_process", p)

    def process(self, p):
        self._run("process", p)

    def process_before_every_sampling(self, p, **kwargs):
        self._run("process_before_every_sampling", p, **kwargs)

    def before_hr(self, p):
        self._run("before_hr", p)

    def postprocess(self, p, processed):
        for script in self.alwayson_scripts:
            try:
                args = p.script_args[script.args_from : script.args_to]
                script.postprocess(p, processed, *args)
            except Exception:
                errors.report(f"Error running postprocess: {script.filename}", exc_info=True)
