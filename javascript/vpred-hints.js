// sd-webui-vpred: hover hints (title attribute) for the VPred panel in txt2img and img2img.
// Everything stays inside this function: no globals are created, and the WebUI's global `titles` is not touched.
// The texts equal lib_vpred/params.py PARAMS[*].help (and ui.PANEL_HINT, ui.REFRESH_HINT); tests/unit/test_js_hints.py
// checks this.
(function() {
    "use strict";

    // elem_id suffix -> hint. Keep this object valid JSON: the unit test parses it.
    var HINTS = /* vpred-hints:begin */ {
        "panel": "What the next generation will do with this checkpoint. Open it to see why and to change the settings; folding it away does not turn the extension off (use Enable inside).",
        "enabled": "Turn the extension on or off. On, it changes only v-prediction checkpoints; eps checkpoints are left exactly as they are. Folding the panel away does not turn it off.",
        "prediction": "Leave at Auto: the checkpoint's YAML file, keys and metadata tell. Pick v-prediction or eps only when a checkpoint is detected wrongly (its images come out grey, noisy or burnt).",
        "ztsnr": "Leave at Auto: on for v-prediction checkpoints trained for it (SD1 ones such as fluffyrock), off for SD2 768-v. Pick On when a checkpoint's model card says 'zero terminal SNR' but the status does not; Off to compare.",
        "spacing": "Auto (recommended): the first step starts from pure noise, so very dark and very bright images work; the steps then follow what measured best for the sampler (trailing, or for DPM++ 2M and LMS log-even down to the smallest noise). Trailing: trailing steps with every sampler. Schedule type: the WebUI's Schedule type decides.",
        "cfg_rescale": "Tames the burnt, over-saturated look of high CFG scales on v-prediction checkpoints. 0.7 suits CFG 7; lower it (0.2-0.4) if colours look washed out; 0 turns it off.",
        "refresh": "Re-read the loaded checkpoint. Not needed normally: the panel updates by itself when the page loads, the checkpoint changes or a setting changes."
    } /* vpred-hints:end */;
    var TABS = ["txt2img", "img2img"];

    function app() {
        return typeof gradioApp === "function" ? gradioApp() : document;
    }

    function target(root, tab, item) {
        var elem = root.querySelector("#script_" + tab + "_vpred_" + item);
        if (!elem) return null;
        if (item === "panel") {
            // The accordion: hint on its header only, not on everything inside the accordion.
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
