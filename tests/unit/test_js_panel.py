"""``javascript/vpred-panel.js``: the page keeps the panel current without Refresh.

Run with node against a tiny fake DOM and a fake ``fetch`` of ``GET /vpred/v1/loaded``: once the UI is loaded it clicks
the Refresh button of both tabs, clicks again only when the loaded checkpoint changes (or the route cannot be read
the first time), polls only while the page is visible, and creates no globals.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

JS = Path(__file__).resolve().parents[2] / "javascript" / "vpred-panel.js"

NODE_HARNESS = r"""
const vm = require("vm");
const fs = require("fs");
const [jsPath] = process.argv.slice(2);
const clicks = {txt2img: 0, img2img: 0};
const elems = {};
for (const tab of ["txt2img", "img2img"]) {
    elems["#script_" + tab + "_vpred_refresh"] = {click: () => { clicks[tab] += 1; }};
}
const listeners = {};
const document = {
    visibilityState: "visible",
    querySelector: (sel) => elems[sel] || null,
    addEventListener: (name, f) => { listeners[name] = f; },
};
let answer = {checkpoint: "a.safetensors [1]"};
let fail = false;
const requested = [];
const loaded = [];
const intervals = [];
const sandbox = {
    document,
    window: {addEventListener: (name, f) => { listeners["window:" + name] = f; }},
    gradioApp: () => document,
    onUiLoaded: (f) => loaded.push(f),
    setInterval: (f, ms) => { intervals.push([f, ms]); return 1; },
    fetch: (url) => {
        requested.push(url);
        if (fail) return Promise.reject(new Error("offline"));
        return Promise.resolve({ok: true, json: () => Promise.resolve(answer)});
    },
};
vm.createContext(sandbox);
const before = Object.getOwnPropertyNames(sandbox).sort();
vm.runInContext(fs.readFileSync(jsPath, "utf8"), sandbox, {filename: "vpred-panel.js"});
const after = Object.getOwnPropertyNames(sandbox).sort();
const tick = () => new Promise((r) => setTimeout(r, 0));
const steps = [];
(async () => {
    steps.push({name: "before load", ...clicks});
    loaded.forEach((f) => f());
    await tick(); await tick();
    steps.push({name: "after load", ...clicks});
    intervals[0][0](); await tick(); await tick();
    steps.push({name: "same checkpoint", ...clicks});
    answer = {checkpoint: "b.safetensors [2]"};
    intervals[0][0](); await tick(); await tick();
    steps.push({name: "new checkpoint", ...clicks});
    document.visibilityState = "hidden";
    answer = {checkpoint: "c.safetensors [3]"};
    intervals[0][0](); await tick(); await tick();
    steps.push({name: "hidden", ...clicks});
    document.visibilityState = "visible";
    listeners["visibilitychange"](); await tick(); await tick();
    steps.push({name: "visible again", ...clicks});
    console.log(JSON.stringify({
        steps, before, after, requests: requested.length, url: requested[0],
        interval: intervals.map((i) => i[1]), listens: Object.keys(listeners).sort(),
    }));
})();
"""


def run_harness(tmp_path: Path) -> dict:
    harness = tmp_path / "harness.js"
    harness.write_text(NODE_HARNESS)
    run = subprocess.run(["node", str(harness), str(JS)], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_refreshes_on_load_and_on_checkpoint_change_only(tmp_path):
    result = run_harness(tmp_path)
    counts = {s["name"]: (s["txt2img"], s["img2img"]) for s in result["steps"]}
    assert counts == {
        "before load": (0, 0),
        "after load": (1, 1),
        "same checkpoint": (1, 1),
        "new checkpoint": (2, 2),
        "hidden": (2, 2),
        "visible again": (3, 3),
    }
    assert result["before"] == result["after"], "the script created globals"
    assert result["url"] == "./vpred/v1/loaded"
    assert result["interval"] == [2000]
    assert result["listens"] == ["visibilitychange", "window:focus"]


def test_js_is_one_iife():
    code = re.sub(r"^\s*//.*$", "", JS.read_text(encoding="utf-8"), flags=re.M).strip()
    assert code.startswith("(function() {")
    assert code.endswith("})();")
