// sd-webui-vpred: hover hints (title attribute) for the VPred panel in txt2img and img2img.
// Everything stays inside this function: no globals are created, and the WebUI's global `titles` is not touched.
// The texts equal lib_vpred/params.py PARAMS[*].help (and ui.REFRESH_HINT); tests/unit/test_js_hints.py checks this.
(function() {
    "use strict";

    // elem_id suffix -> hint. Keep this object valid JSON: the unit test parses it.
    var HINTS = /* vpred-hints:begin */ {
        "enabled": "Master switch. When off the extension changes nothing. When on it only acts on v-prediction checkpoints.",
        "prediction": "Auto: detect from the YAML beside the checkpoint, checkpoint keys and metadata. v-prediction / eps: override a mis-flagged checkpoint.",
        "ztsnr": "Rescale the noise schedule to zero terminal SNR (paper Algorithm 1). Auto: on for v-prediction checkpoints unless there is evidence against it.",
        "spacing": "Trailing: the first step is always the last timestep (paper Table 2). Schedule type: keep the WebUI's selected schedule type.",
        "cfg_rescale": "Rescale the guided v prediction towards the positive prediction's std (paper Algorithm 2). 0 disables it; the paper recommends 0.5-0.75 (0.7 with CFG 7.5).",
        "refresh": "Re-read the loaded checkpoint and update the status line and the schedule preview."
    } /* vpred-hints:end */;
    var TABS = ["txt2img", "img2img"];

    function app() {
        return typeof gradioApp === "function" ? gradioApp() : document;
    }

    function target(root, tab, item) {
        var elem = root.querySelector("#script_" + tab + "_vpred_" + item);
        if (!elem) return null;
        if (item === "enabled") {
            // The InputAccordion: hint on its header only, not on everything inside the accordion.
            return elem.querySelector(".label-wrap") || elem;
        }
        return elem;
    }

    function applyHints() {
        var root = app();
        if (!root || typeof root.querySelector !== "function") return;
        TABS.forEach(function(tab) {
            Object.keys(HINTS).forEach(function(item) {
                var elem = target(root, tab, item);
                if (elem && elem.title !== HINTS[item]) {
                    elem.title = HINTS[item];
                }
            });
        });
    }

    if (typeof onUiLoaded === "function") {
        onUiLoaded(applyHints);
    }
    if (typeof onAfterUiUpdate === "function") {
        onAfterUiUpdate(applyHints);
    }
})();
