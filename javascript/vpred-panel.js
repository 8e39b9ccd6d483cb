// sd-webui-vpred: keep the VPred panel's status line and schedule preview current without pressing Refresh.
// Once the UI is loaded, and whenever the loaded checkpoint changes (the checkpoint dropdown, Settings, or a model
// loaded by an API call), click the panel's Refresh button in both tabs. The loaded checkpoint is read from the
// extension's small GET /vpred/v1/loaded route every POLL_MS while the page is visible, and when the page regains
// focus. Everything stays inside this function: no globals are created.
(function() {
    "use strict";

    var TABS = ["txt2img", "img2img"];
    var POLL_MS = 2000;
    var last = null;
    var busy = false;

    function app() {
        return typeof gradioApp === "function" ? gradioApp() : document;
    }

    function refreshPanels() {
        var root = app();
        if (!root || typeof root.querySelector !== "function") return;
        TABS.forEach(function(tab) {
            var button = root.querySelector("#script_" + tab + "_vpred_refresh");
            if (button) button.click();
        });
    }

    function check() {
        if (busy || document.visibilityState === "hidden" || typeof fetch !== "function") return;
        busy = true;
        fetch("./vpred/v1/loaded", {cache: "no-store"})
            .then(function(response) {
                return response.ok ? response.json() : null;
            })
            .then(function(data) {
                var key = data ? JSON.stringify(data) : "unknown";
                if (key !== last) {
                    last = key;
                    refreshPanels();
                }
            })
            .catch(function() {
                if (last === null) {
                    last = "unknown";
                    refreshPanels();
                }
            })
            .then(function() {
                busy = false;
            });
    }

    if (typeof onUiLoaded === "function") {
        onUiLoaded(function() {
            check();
            setInterval(check, POLL_MS);
            document.addEventListener("visibilitychange", check);
            window.addEventListener("focus", check);
        });
    }
})();
