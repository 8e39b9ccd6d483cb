"""``javascript/vpred-hints.js``: a hover hint for every control of the panel, with the texts of ``lib_vpred.params``.

The mapping is parsed out of the JS (a JSON object between ``/* vpred-hints:begin */`` and ``/* vpred-hints:end */``)
and compared with :data:`lib_vpred.params.PARAMS`; the panel is built with real gradio to list its controls. When node
is installed the script also runs against a tiny fake DOM: it must set the titles in both tabs and create no globals.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import gradio as gr
import pytest

from lib_vpred.params import PARAMS
from lib_vpred.webui import ui

JS = Path(__file__).resolve().parents[2] / "javascript" / "vpred-hints.js"
TABS = ("txt2img", "img2img")


def js_hints() -> dict[str, str]:
    text = JS.read_text(encoding="utf-8")
    match = re.search(r"/\* vpred-hints:begin \*/(.*?)/\* vpred-hints:end \*/", text, re.S)
    assert match, "the hint mapping markers are missing from vpred-hints.js"
    return json.loads(match.group(1))


class FakeScript:
    def __init__(self, tab: str) -> None:
        self.tab = tab

    def elem_id(self, item: str) -> str:
        return f"script_{self.tab}_vpred_{item}"


def panel_controls(tab: str) -> list[str]:
    """elem_id suffixes of every control (inputs and buttons) the panel creates."""
    script = FakeScript(tab)
    with gr.Blocks() as blocks:
        ui.build(script, tab == "img2img", lambda *a: "", preview_fn=lambda *a: "")
    prefix = f"script_{tab}_vpred_"
    out = []
    for block in blocks.blocks.values():
        elem_id = getattr(block, "elem_id", None) or ""
        if not elem_id.startswith(prefix) or isinstance(block, (gr.HTML, gr.State)):
            continue
        out.append(elem_id[len(prefix) :])
    return out


def test_hint_texts_equal_params_help():
    hints = js_hints()
    for param in PARAMS:
        assert param.name in hints, f"no hint for {param.name}"
        assert hints[param.name] == param.help, f"hint for {param.name} differs from PARAMS help"
    assert hints["refresh"] == ui.REFRESH_HINT
    assert hints["panel"] == ui.PANEL_HINT


@pytest.mark.parametrize("tab", TABS)
def test_every_panel_control_has_a_hint(tab):
    controls = panel_controls(tab)
    assert set(controls) >= {p.name for p in PARAMS} | {"refresh"}
    missing = sorted(set(controls) - set(js_hints()))
    assert not missing, f"controls without a hover hint: {missing}"


def test_js_is_namespaced():
    text = JS.read_text(encoding="utf-8")
    code = re.sub(r"^\s*//.*$", "", text, flags=re.M).strip()
    assert code.startswith("(function() {"), "the script must be one IIFE"
    assert code.endswith("})();"), "the script must be one IIFE"
    assert not re.search(r"\btitles\s*\[", code), "must not add to the WebUI's global titles"
    assert "window." not in code


NODE_HARNESS = r"""
const vm = require("vm");
const fs = require("fs");
const [jsPath, idsJson] = process.argv.slice(2);
const ids = JSON.parse(idsJson);
function makeElem(id) {
    const el = {id: id, title: "", children: {}};
    el.querySelector = (sel) => el.children[sel] || null;
    return el;
}
const elems = {};
for (const id of ids) {
    const el = makeElem(id);
    if (id.endsWith("_panel")) el.children[".label-wrap"] = makeElem(id + " .label-wrap");
    elems["#" + id] = el;
}
const document = {querySelector: (sel) => elems[sel] || null};
const loaded = [], updated = [];
const sandbox = {
    document,
    gradioApp: () => document,
    onUiLoaded: (f) => loaded.push(f),
    onAfterUiUpdate: (f) => updated.push(f),
    titles: {"Sampling steps": "x"},
};
vm.createContext(sandbox);
const before = Object.getOwnPropertyNames(sandbox).sort();
vm.runInContext(fs.readFileSync(jsPath, "utf8"), sandbox, {filename: "vpred-hints.js"});
loaded.forEach((f) => f());
updated.forEach((f) => f());
const after = Object.getOwnPropertyNames(sandbox).sort();
const titles = {};
for (const key in elems) {
    const el = elems[key];
    titles[el.id] = el.title;
    if (el.children[".label-wrap"]) titles[el.id + " .label-wrap"] = el.children[".label-wrap"].title;
}
// and without any WebUI helpers at all: must not throw
const bare = {document};
vm.createContext(bare);
vm.runInContext(fs.readFileSync(jsPath, "utf8"), bare);
console.log(JSON.stringify({
    before, after, titles, loaded: loaded.length, updated: updated.length,
    webuiTitles: Object.keys(sandbox.titles), bareGlobals: Object.getOwnPropertyNames(bare).sort(),
}));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_js_sets_titles_in_both_tabs_and_creates_no_globals(tmp_path):
    ids = [f"script_{tab}_vpred_{item}" for tab in TABS for item in panel_controls(tab)]
    harness = tmp_path / "harness.js"
    harness.write_text(NODE_HARNESS)
    run = subprocess.run(
        ["node", str(harness), str(JS), json.dumps(ids)], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["before"] == result["after"], "the script created or removed globals"
    assert result["bareGlobals"] == ["document"]
    assert result["webuiTitles"] == ["Sampling steps"]
    assert result["loaded"] == 1
    assert result["updated"] == 1
    hints = js_hints()
    titles = result["titles"]
    for tab in TABS:
        for item in panel_controls(tab):
            elem_id = f"script_{tab}_vpred_{item}"
            if item == "panel":
                assert titles[elem_id + " .label-wrap"] == hints[item]
                assert titles[elem_id] == "", "the accordion's hint belongs on its header only"
            else:
                assert titles[elem_id] == hints[item], elem_id
