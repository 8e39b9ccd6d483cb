"""Glue tier: load ``scripts/vpred.py`` the way the WebUI does, against the stand-in ``modules`` in ``stub/``.

Every test gets fresh stand-in modules (so no state leaks between tests) and real gradio 3.41 for the UI.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

STUB = Path(__file__).parent / "stub"
REPO = Path(__file__).resolve().parents[2]


def _stub_modules() -> dict:
    return {name: mod for name, mod in sys.modules.items() if name == "modules" or name.startswith("modules.")}


def _drop_stub_modules() -> None:
    for name in list(sys.modules):
        if name == "modules" or name.startswith("modules."):
            del sys.modules[name]


class WebUI:
    """The loaded stand-in: ``modules`` namespaces, the script module and txt2img/img2img runners."""

    def __init__(self, tmp_path: Path, with_extension: bool = True) -> None:
        import gradio as gr
        from modules import errors, processing, scripts, sd_models, shared

        self.tmp = tmp_path
        self.shared = shared
        self.sd_models = sd_models
        self.processing = processing
        self.errors = errors
        self.script_module = None
        self.runners = {}
        from modules import script_callbacks, xyz_grid

        self.xyz_grid = xyz_grid
        self.script_callbacks = script_callbacks
        # The WebUI's start-up order: load every script (the built-in XYZ script among them), before_ui callbacks,
        # then create_ui: settings callbacks (ui_settings.register_settings), then each tab's script UIs.
        scripts.scripts_data.append(
            scripts.ScriptClassData(xyz_grid.Script, "scripts/xyz_grid.py", str(REPO), xyz_grid)
        )
        if with_extension:
            spec = importlib.util.spec_from_file_location("vpred.py", REPO / "scripts" / "vpred.py")
            self.script_module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(self.script_module)
            scripts.scripts_data.append(
                scripts.ScriptClassData(
                    self.script_module.VPredScript, "scripts/vpred.py", str(REPO), self.script_module
                )
            )
        script_callbacks._run("before_ui")
        script_callbacks._run("ui_settings")
        for is_img2img in (False, True):
            runner = scripts.ScriptRunner(is_img2img)
            if with_extension:
                runner.add_script(self.script_module.VPredScript, str(REPO / "scripts" / "vpred.py"))
            with gr.Blocks():
                runner.setup_ui()
            self.runners[is_img2img] = runner
        #: This stand-in's ``modules`` package; :meth:`active` puts it back into ``sys.modules`` when it runs.
        self.modules = _stub_modules()

    @contextlib.contextmanager
    def active(self):
        """Make this stand-in the importable ``modules`` while it works.

        Several stand-ins coexist in one test (with / without the extension); code that imports ``modules`` lazily
        (the extension does, e.g. ``from modules import sd_schedulers`` inside a hook) must see the running one.
        """
        saved = _stub_modules()
        _drop_stub_modules()
        sys.modules.update(self.modules)
        try:
            yield self
        finally:
            self.modules.update(_stub_modules())  # keep modules first imported during the run
            _drop_stub_modules()
            sys.modules.update(saved)

    def add_model(self, name: str, **kwargs) -> object:
        from tests.glue.fakemodel import FakeSDModel, write_checkpoint

        ckpt_kwargs = {k: kwargs.pop(k) for k in ("yaml_v", "keys") if k in kwargs}
        path = write_checkpoint(self.tmp, name, family=kwargs.get("family", "SD1"), **ckpt_kwargs)
        with self.active():
            model = FakeSDModel(path, **kwargs)
        self.sd_models.register(model)
        if self.shared.sd_model is None:
            self.shared.sd_model = model
            self.shared.opts.sd_model_checkpoint = name
        return model

    def default_args(self, is_img2img: bool = False) -> list:
        runner = self.runners[is_img2img]
        return [getattr(c, "value", None) for c in runner.inputs[1:]]

    def run(self, kind: str = "txt2img", *, script_args=None, seed: int = 1, **kwargs):
        is_img2img = kind == "img2img"
        runner = self.runners[is_img2img]
        cls = (
            self.processing.StableDiffusionProcessingImg2Img
            if is_img2img
            else self.processing.StableDiffusionProcessingTxt2Img
        )
        if is_img2img and "init_latent" not in kwargs:
            kwargs["init_latent"] = (
                torch.linspace(-1, 1, 4 * 8 * 8).reshape(1, 4, 8, 8).repeat(kwargs.get("batch_size", 1), 1, 1, 1)
            )
        p = cls(sd_model=self.shared.sd_model, seed=seed, **kwargs)
        p.scripts = runner
        args = self.default_args(is_img2img) if script_args is None else list(script_args)
        p.script_args = (None, *args) if runner.alwayson_scripts else (None,)
        torch.manual_seed(seed)
        with self.active():
            processed = self.processing.process_images(p)
        return p, processed


@pytest.fixture
def make_webui(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(STUB))
    created = []

    def make(with_extension: bool = True) -> WebUI:
        _drop_stub_modules()
        folder = tmp_path / f"w{len(created)}"
        folder.mkdir()
        webui = WebUI(folder, with_extension)
        created.append(webui)
        return webui

    yield make
    _drop_stub_modules()


@pytest.fixture
def webui(make_webui) -> WebUI:
    return make_webui(True)


def images(processed) -> torch.Tensor:
    return torch.stack(list(processed.images))
