"""The panel's contract with the WebUI and the HTTP endpoints (issue item 12), plus the infotext round trip.

Real gradio 3.41 builds the panel through the stand-in's script runner; the endpoints run on a real FastAPI app with
``fastapi.testclient.TestClient`` (in-process, no network).
"""

from __future__ import annotations

import gradio as gr
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lib_vpred.webui import api as vapi
from tests.glue.test_support import EPS_SD1, V_SD1, V_SDXL_KEYS, images, infotext, new_webui, vpred_keys

DEFAULT_VALUES = [True, "Auto", "Auto", "Auto", 0.7]
FIELDS = ["enabled", "prediction", "ztsnr", "spacing", "cfg_rescale"]


def _script(w, is_img2img):
    return w.runners[is_img2img].alwayson_scripts[0]


def _paste(w, is_img2img, params):
    """What the WebUI's paste button does with the script's ``infotext_fields`` (v1.10.1 ``infotext_utils.connect_paste``
    ``paste_func``): run the ``infotext_pasted`` callbacks on the parsed dict, then set each field from its key (a
    callable gets the dict; a name is looked up and converted by the type of the component's value)."""
    from modules import script_callbacks

    params = dict(params)
    script_callbacks.infotext_pasted_callback("", params)
    out = []
    for component, key in _script(w, is_img2img).infotext_fields:
        v = key(params) if callable(key) else params.get(key)
        if v is None:
            out.append(component.value)
            continue
        valtype = type(component.value)
        if valtype is bool and v == "False":
            out.append(False)
        elif valtype is int:
            out.append(float(v))
        else:
            out.append(valtype(v))
    return out


def _send_to(w, source_is_img2img, values):
    """What a Send to img2img / inpaint button does (``connect_paste_params_buttons``): copy the source tab's fields
    whose infotext name is in the target's ``paste_field_names`` to the same-named fields of the target tab."""
    source = dict(zip([k for _, k in _script(w, source_is_img2img).infotext_fields], values, strict=True))
    names = set(w.runners[True].paste_field_names)
    target = _script(w, True)
    return [source[k] if k in names and k in source else c.value for c, k in target.infotext_fields]


@pytest.mark.parametrize("is_img2img", [False, True])
def test_panel_has_five_controls_with_the_positional_defaults(make_webui, is_img2img):
    w = new_webui(make_webui, True, models=[V_SD1])
    runner = w.runners[is_img2img]
    script = _script(w, is_img2img)
    assert (script.args_from, script.args_to) == (1, 6)
    controls = runner.inputs[script.args_from : script.args_to]
    assert [type(c).__name__ for c in controls] == ["Checkbox", "Radio", "Radio", "Radio", "Slider"]
    assert [c.value for c in controls] == DEFAULT_VALUES
    assert [value for _, value in controls[1].choices] == ["Auto", "v-prediction", "eps"]
    assert [value for _, value in controls[2].choices] == ["Auto", "On", "Off"]
    assert [value for _, value in controls[3].choices] == ["Auto", "Trailing", "Schedule type"]
    assert (controls[4].minimum, controls[4].maximum) == (0.0, 1.0)
    assert [c for c, _ in script.infotext_fields] == controls
    # each entry is the key by name (Send to copies by name) and reads its value itself (paste and the API's infotext)
    assert [k for _, k in script.infotext_fields] == [
        "VPred",
        "VPred prediction",
        "VPred ZTSNR",
        "VPred spacing",
        "VPred CFG rescale",
    ]
    assert all(callable(k) for _, k in script.infotext_fields)
    assert set(script.paste_field_names) == {
        "VPred",
        "VPred prediction",
        "VPred ZTSNR",
        "VPred spacing",
        "VPred CFG rescale",
    }
    tab = "img2img" if is_img2img else "txt2img"
    assert all(tab in c.elem_id for c in controls)


def test_ui_called_again_is_side_effect_free_and_gives_the_same_defaults(make_webui):
    """The API's init_default_script_args calls ui() again inside gr.Blocks() and reads ``.value``."""
    w = new_webui(make_webui, True, models=[V_SD1])
    callbacks = {k: list(v) for k, v in w.mods.script_callbacks.callback_map.items()}
    opts = dict(w.shared.opts.data)
    runners = {k: (list(r.inputs), list(r.infotext_fields), list(r.paste_field_names)) for k, r in w.runners.items()}
    schedulers = list(w.mods.sd_schedulers.schedulers)
    for is_img2img in (False, True):
        for _ in range(2):
            with gr.Blocks():
                controls = _script(w, is_img2img).ui(is_img2img)
            assert [c.value for c in controls] == DEFAULT_VALUES
    assert {k: list(v) for k, v in w.mods.script_callbacks.callback_map.items()} == callbacks
    assert w.shared.opts.data == opts
    assert {
        k: (list(r.inputs), list(r.infotext_fields), list(r.paste_field_names)) for k, r in w.runners.items()
    } == runners
    assert list(w.mods.sd_schedulers.schedulers) == schedulers
    # and a generation afterwards still reads the runner's own controls
    _, out = w.run("txt2img", prompt="a cat", steps=4)
    assert vpred_keys(out)["VPred CFG rescale"] == "0.7"


PASTES = {
    "our-auto-values": (
        {
            "VPred prediction": "v-prediction (auto)",
            "VPred ZTSNR": "on (auto)",
            "VPred spacing": "trailing (auto)",
            "VPred CFG rescale": "0.7",
        },
        [True, "Auto", "Auto", "Auto", 0.7],
    ),
    "our-forced-values": (
        {
            "VPred prediction": "v-prediction",
            "VPred ZTSNR": "on",
            "VPred spacing": "trailing",
            "VPred CFG rescale": "0.35",
        },
        [True, "v-prediction", "On", "Trailing", 0.35],
    ),
    "builtin-ztsnr": (
        {"VPred prediction": "v-prediction (auto)", "VPred ZTSNR": "built-in"},
        [True, "Auto", "Auto", "Auto", 0.7],
    ),
    "eps-forced": ({"VPred prediction": "eps", "VPred ZTSNR": "off"}, [True, "eps", "Off", "Auto", 0.7]),
    "legacy-cfg-rescale": ({"CFG Rescale": "0.5", "Steps": "20"}, [True, "Auto", "Auto", "Auto", 0.5]),
    "legacy-neutral-prompt": ({"CFG Rescale phi": "0.25"}, [True, "Auto", "Auto", "Auto", 0.25]),
    "ours-beat-legacy": ({"VPred CFG rescale": "0.3", "CFG Rescale": "0.9"}, [True, "Auto", "Auto", "Auto", 0.3]),
    "unparseable-values": (
        {"VPred CFG rescale": "abc", "VPred ZTSNR": "perhaps", "VPred prediction": "x0"},
        DEFAULT_VALUES,
    ),
    "no-keys": ({"Steps": "20", "Sampler": "Euler"}, DEFAULT_VALUES),
}


def test_infotext_paste_restores_the_controls(make_webui):
    w = new_webui(make_webui, True, models=[V_SD1])
    for is_img2img in (False, True):
        for case, (params, expected) in PASTES.items():
            assert _paste(w, is_img2img, params) == expected, case


ROUND_TRIPS = {
    "defaults": DEFAULT_VALUES,
    "forced": [True, "v-prediction", "On", "Trailing", 0.3],
    "phi1": [True, "Auto", "Auto", "Trailing", 1.0],
    "phi0": [True, "Auto", "Auto", "Trailing", 0.0],
    "schedule-type": [True, "Auto", "Auto", "Schedule type", 0.7],
    "ztsnr-off": [True, "Auto", "Off", "Trailing", 0.7],
    "disabled": [False, "Auto", "Auto", "Auto", 0.7],
    "explicit-trailing": [True, "Auto", "Auto", "Trailing", 0.7],
}


@pytest.mark.parametrize("args", ROUND_TRIPS.values(), ids=list(ROUND_TRIPS))
def test_infotext_round_trip_reproduces_the_image(make_webui, args):
    """Generate, paste the image's infotext into the panel, generate again: same image (the WebUI's promise)."""
    w = new_webui(make_webui, True, models=[V_SD1])
    _, first = w.run("txt2img", script_args=args, prompt="a cat", steps=4)
    pasted = _paste(w, False, infotext(first))
    _, second = w.run("txt2img", script_args=pasted, prompt="a cat", steps=4)
    assert torch.equal(images(first), images(second))
    assert pasted == [
        args[0],
        args[1],
        args[2],
        args[3],
        float(args[4]),
    ]


def test_infotext_round_trip_with_auto_exponential_spacing(make_webui):
    """DPM++ 2M with the defaults samples exponential spacing; the infotext says so ("exponential (auto)"), pasting
    restores Auto, and the second generation is the same image."""
    w = new_webui(make_webui, True, models=[V_SD1])
    _, first = w.run("txt2img", prompt="a cat", steps=4, sampler_name="DPM++ 2M")
    assert infotext(first)["VPred spacing"] == "exponential (auto)"
    pasted = _paste(w, False, infotext(first))
    assert pasted == DEFAULT_VALUES
    _, second = w.run("txt2img", script_args=pasted, prompt="a cat", steps=4, sampler_name="DPM++ 2M")
    assert torch.equal(images(first), images(second))
    _, trailing = w.run("txt2img", script_args=[True, "Auto", "Auto", "Trailing", 0.7], prompt="a cat", steps=4,
                        sampler_name="DPM++ 2M")  # fmt: skip
    assert not torch.equal(images(first), images(trailing))  # the spacing is what made the image


@pytest.mark.parametrize(
    "values", [[True, "v-prediction", "On", "Schedule type", 0.4], [False, "eps", "Off", "Trailing", 0.0]]
)
def test_send_to_img2img_copies_every_control(make_webui, values):
    w = new_webui(make_webui, True, models=[V_SD1])
    assert _send_to(w, False, values) == values


def test_status_text_says_what_was_detected(make_webui):
    """One short line in plain words (what the next generation does); the why and the warnings are the hover text;
    the header summary is a few words."""
    w = new_webui(make_webui, True, models=[V_SD1, EPS_SD1, V_SDXL_KEYS])
    status = w.script_module._status_text
    found = status(*DEFAULT_VALUES)
    assert found.line == f"{V_SD1[0]}: v-prediction + zero terminal SNR, trailing steps, CFG rescale 0.7"
    assert "\n" not in found.line
    assert "YAML" in found.hover
    assert found.summary == "v-pred + ZTSNR · trailing · φ 0.7"
    assert "no CFG rescale" in status(True, "Auto", "Auto", "Trailing", 0.0).line
    assert status(False, "Auto", "Auto", "Trailing", 0.7).line.endswith("disabled")
    assert status(False, "Auto", "Auto", "Trailing", 0.7).summary == "off"
    assert status(True, "maybe", "Auto", "Trailing", 0.7).line.startswith("invalid setting")
    # prediction set to eps on a v checkpoint: never called an "eps checkpoint"
    eps_on_v = status(True, "eps", "Auto", "Trailing", 0.7)
    assert "eps checkpoint" not in eps_on_v.line.replace("v-pred checkpoint sampled as eps", "")
    assert "v-pred checkpoint sampled as eps" in eps_on_v.line

    w.shared.sd_model = w.models[EPS_SD1[0]]
    assert status(*DEFAULT_VALUES).line == f"{EPS_SD1[0]}: eps checkpoint: unchanged"

    w.shared.sd_model = w.models[V_SDXL_KEYS[0]]
    found = status(*DEFAULT_VALUES)
    assert "v-prediction + zero terminal SNR" in found.line
    assert "v_pred" in found.hover

    w.shared.sd_model = None
    assert status(*DEFAULT_VALUES).line == "no checkpoint loaded"


VALIDATE = {
    "positional": ({"args": [True, "Auto", "Auto", "Trailing", 0.7]}, 200, None),
    "positional-normalised": ({"args": [False, "EPS", "off", "schedule type", 1]}, 200, None),
    "positional-prefix": ({"args": [True]}, 200, None),
    "dict": ({"args": {"cfg_rescale": 0.3}}, 200, None),
    "dict-in-list": ({"args": [{"spacing": "Schedule type"}]}, 200, None),
    "empty-list": ({"args": []}, 200, None),
    "no-args": ({}, 422, "args"),
    "not-an-object": ([True], 422, "args"),
    "too-many": ({"args": [True, "Auto", "Auto", "Trailing", 0.7, 1]}, 422, "args"),
    "wrong-type": ({"args": [True, "Auto", "Auto", "Trailing", "0.7"]}, 422, "cfg_rescale"),
    "out-of-range": ({"args": {"cfg_rescale": 1.5}}, 422, "cfg_rescale"),
    "unknown-choice": ({"args": [True, "maybe"]}, 422, "prediction"),
    "unknown-field": ({"args": {"phi": 1}}, 422, "phi"),
    "bool-as-number": ({"args": {"cfg_rescale": True}}, 422, "cfg_rescale"),
}

NORMALISED = {
    "positional": [True, "Auto", "Auto", "Trailing", 0.7],
    "positional-normalised": [False, "eps", "Off", "Schedule type", 1.0],
    "positional-prefix": DEFAULT_VALUES,
    "dict": [True, "Auto", "Auto", "Auto", 0.3],
    "dict-in-list": [True, "Auto", "Auto", "Schedule type", 0.7],
    "empty-list": DEFAULT_VALUES,
}


@pytest.mark.parametrize("case", VALIDATE, ids=list(VALIDATE))
def test_validate_body(case):
    body, status, field = VALIDATE[case]
    got_status, content = vapi.validate_body(body)
    assert got_status == status
    assert content["valid"] is (status == 200)
    if status == 200:
        assert content["args"] == NORMALISED[case]
        assert content["params"] == dict(zip(FIELDS, NORMALISED[case], strict=True))
    else:
        assert content["field"] == field
        assert content["error"]


def test_http_routes_on_a_real_fastapi_app(make_webui):
    w = new_webui(make_webui, True, models=[V_SD1, EPS_SD1])
    app = FastAPI()
    w.mods.script_callbacks.app_started_callback(None, app)  # the extension's own on_app_started registration
    w.mods.script_callbacks.app_started_callback(None, app)  # twice (UI reload): no duplicate routes
    paths = [getattr(r, "path", None) for r in app.routes]
    for path in ("/vpred/v1/schema", "/vpred/v1/validate", "/vpred/v1/status"):
        assert paths.count(path) == 1
    assert w.errors.reported == []

    client = TestClient(app)
    schema = client.get("/vpred/v1/schema")
    assert schema.status_code == 200
    body = schema.json()
    assert body["positional_order"] == FIELDS
    assert [p["default"] for p in body["params"]] == DEFAULT_VALUES
    assert body["params"][1]["choices"] == ["Auto", "v-prediction", "eps"]

    good = client.post("/vpred/v1/validate", json={"args": [True, "auto", "ON", "trailing", 0.25]})
    assert good.status_code == 200
    assert good.json()["args"] == [True, "Auto", "On", "Trailing", 0.25]
    good_dict = client.post("/vpred/v1/validate", json={"args": {"cfg_rescale": 0.3}})
    assert good_dict.status_code == 200
    assert good_dict.json()["params"]["cfg_rescale"] == 0.3

    bad = client.post("/vpred/v1/validate", json={"args": [True, "maybe"]})
    assert bad.status_code == 422
    assert bad.json()["field"] == "prediction"
    assert "'Auto', 'v-prediction', 'eps'" in bad.json()["error"]
    bad_range = client.post("/vpred/v1/validate", json={"args": {"cfg_rescale": 1.5}})
    assert bad_range.status_code == 422
    assert bad_range.json()["field"] == "cfg_rescale"
    assert client.post("/vpred/v1/validate", json={"phi": 1}).status_code == 422

    status = client.get("/vpred/v1/status")
    assert status.status_code == 200
    data = status.json()
    assert data["checkpoint"] == V_SD1[0]
    assert data["webui_prediction"] == "v"
    assert data["detection"]["prediction"] == "v"
    assert "v-prediction + zero terminal SNR" in data["status"]
    assert client.get("/vpred/v1/loaded").json() == {"checkpoint": w.shared.sd_model.sd_checkpoint_info.title}

    w.shared.sd_model = w.models[EPS_SD1[0]]
    data = client.get("/vpred/v1/status").json()
    assert data["checkpoint"] == EPS_SD1[0]
    assert data["webui_prediction"] == "eps"
    assert "eps checkpoint: unchanged" in data["status"]

    w.shared.sd_model = None
    assert client.get("/vpred/v1/status").json() == {"checkpoint": None, "status": "no checkpoint loaded"}
    assert client.get("/vpred/v1/loaded").json() == {"checkpoint": None}
