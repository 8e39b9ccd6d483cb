"""lib_vpred.params: the parameter table, its validation, the positional/dict API forms, schema and infotext."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from lib_vpred import params
from lib_vpred.params import ParamError, VPredParams

FIRST_FIVE = ["enabled", "prediction", "ztsnr", "spacing", "cfg_rescale"]
EXPECTED_DEFAULTS = {"enabled": True, "prediction": "Auto", "ztsnr": "Auto", "spacing": "Auto", "cfg_rescale": 0.7}


# --- the table is the wire format ---------------------------------------------------------------------------------


def test_first_five_positional_names_never_change():
    # Append-only guard: positional API args of existing users depend on this prefix.
    assert [p.name for p in params.PARAMS][:5] == FIRST_FIVE


def test_every_dataclass_field_has_a_param_in_order():
    field_names = [f.name for f in dataclasses.fields(VPredParams)]
    assert field_names == [p.name for p in params.PARAMS]
    assert list(params.PARAMS_BY_NAME) == field_names
    for f in dataclasses.fields(VPredParams):
        p = params.PARAMS_BY_NAME[f.name]
        assert f.default == p.default, f.name
        assert isinstance(p.default, p.kind), f.name
        p.validate(p.default)  # every default is itself valid


def test_param_table_is_well_formed():
    for p in params.PARAMS:
        assert p.label, p.name
        assert p.help, p.name
        if p.kind is float:
            assert p.minimum is not None
            assert p.maximum is not None
            assert p.minimum < p.maximum
            assert p.minimum <= p.default <= p.maximum
        if p.kind is str:
            assert p.choices
            assert p.default in p.choices
        if p.infotext_key is not None:
            assert p.infotext_key == "VPred" or p.infotext_key.startswith("VPred "), (
                p.name
            )  # namespaced (style.md rule 6)
    keys = [p.infotext_key for p in params.PARAMS if p.infotext_key]
    assert len(keys) == len(set(keys))


def test_defaults():
    d = params.defaults()
    assert d == VPredParams()
    assert dataclasses.asdict(d) == EXPECTED_DEFAULTS
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.cfg_rescale = 0.1  # type: ignore[misc]


# --- positional and dict forms ----------------------------------------------------------------------------------


def test_from_args_empty_is_defaults():
    assert params.from_args([]) == params.defaults()
    assert params.from_args(()) == params.defaults()


def test_from_args_partial_positional():
    got = params.from_args([False, "eps"])
    assert got == VPredParams(enabled=False, prediction="eps")


def test_from_args_full_positional():
    got = params.from_args([True, "v-prediction", "Off", "Schedule type", 0.25])
    assert got == VPredParams(True, "v-prediction", "Off", "Schedule type", 0.25)


def test_from_args_too_many_positional():
    with pytest.raises(ParamError, match="at most 5") as info:
        params.from_args([True, "Auto", "Auto", "Trailing", 0.7, "extra"])
    assert info.value.field == "args"


def test_from_args_dict_partial():
    got = params.from_args([{"cfg_rescale": 0.5, "ztsnr": "on"}])
    assert got == VPredParams(ztsnr="On", cfg_rescale=0.5)
    assert params.from_dict({}) == params.defaults()


def test_from_dict_keeps_base():
    base = VPredParams(enabled=False, cfg_rescale=0.2)
    assert params.from_dict({"spacing": "schedule type"}, base=base) == VPredParams(
        enabled=False, spacing="Schedule type", cfg_rescale=0.2
    )


def test_from_dict_unknown_field():
    with pytest.raises(ParamError, match="unknown field") as info:
        params.from_args([{"cfg_rescale": 0.5, "phi": 0.7}])
    assert info.value.field == "phi"
    assert all(name in str(info.value) for name in FIRST_FIVE)


def test_from_dict_not_a_mapping():
    with pytest.raises(ParamError) as info:
        params.from_dict([("cfg_rescale", 0.5)])  # type: ignore[arg-type]
    assert info.value.field == "args"


def test_from_dict_non_string_key():
    with pytest.raises(ParamError, match="strings"):
        params.from_dict({1: True})  # type: ignore[dict-item]


def test_to_args_from_args_round_trip():
    for p in (
        params.defaults(),
        VPredParams(False, "eps", "Off", "Schedule type", 0.0),
        VPredParams(True, "v-prediction", "On", "Trailing", 1.0),
    ):
        args = params.to_args(p)
        assert len(args) == len(params.PARAMS)
        assert params.from_args(args) == p
        assert params.from_args([dataclasses.asdict(p)]) == p


# --- validation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("cfg_rescale", "0.5", "a number from 0 to 1"),
        ("cfg_rescale", True, "a number from 0 to 1"),
        ("cfg_rescale", None, "a number from 0 to 1"),
        ("cfg_rescale", 1.5, "a number from 0 to 1"),
        ("cfg_rescale", -0.1, "a number from 0 to 1"),
        ("cfg_rescale", math.nan, "a number from 0 to 1"),
        ("cfg_rescale", math.inf, "a number from 0 to 1"),
        ("cfg_rescale", -math.inf, "a number from 0 to 1"),
        ("enabled", 1, "true or false"),
        ("enabled", 0, "true or false"),
        ("enabled", "true", "true or false"),
        ("prediction", "abc", "'Auto', 'v-prediction', 'eps'"),
        ("prediction", 1, "'Auto', 'v-prediction', 'eps'"),
        ("ztsnr", None, "'Auto', 'On', 'Off'"),
        ("ztsnr", True, "'Auto', 'On', 'Off'"),
        ("spacing", "leading", "'Auto', 'Trailing', 'Schedule type'"),
    ],
)
def test_bad_values_raise_param_error_naming_field(field: str, value, allowed: str):
    for parse in (
        lambda: params.from_dict({field: value}),
        lambda: params.from_args([*params.to_args(params.defaults())[: FIRST_FIVE.index(field)], value]),
        lambda: params.defaults().replace(**{field: value}),
    ):
        with pytest.raises(ParamError) as info:
            parse()
        assert info.value.field == field
        assert allowed in str(info.value)
        assert str(info.value).startswith(f"{field}: ")
        assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", [0, 1, 0.0, 1.0, 0.35])
def test_cfg_rescale_bounds_inclusive_and_ints_become_float(value):
    got = params.from_dict({"cfg_rescale": value}).cfg_rescale
    assert got == float(value)
    assert type(got) is float


@pytest.mark.parametrize(
    ("field", "raw", "canonical"),
    [
        ("prediction", "V-PREDICTION", "v-prediction"),
        ("prediction", " eps ", "eps"),
        ("prediction", "auto", "Auto"),
        ("ztsnr", "oN", "On"),
        ("ztsnr", "OFF", "Off"),
        ("spacing", "trailing", "Trailing"),
        ("spacing", "SCHEDULE TYPE", "Schedule type"),
    ],
)
def test_choices_case_insensitive(field: str, raw: str, canonical: str):
    assert getattr(params.from_dict({field: raw}), field) == canonical


def test_replace_validates_and_copies():
    base = params.defaults()
    new = base.replace(ztsnr="off")
    assert new.ztsnr == "Off"
    assert base.ztsnr == "Auto"
    with pytest.raises(ParamError) as info:
        base.replace(nope=1)
    assert info.value.field == "nope"


# --- schema -----------------------------------------------------------------------------------------------------


def test_schema_lists_every_field_in_order_and_is_json():
    s = params.schema()
    names = [p.name for p in params.PARAMS]
    assert s["positional_order"] == names
    assert [entry["name"] for entry in s["params"]] == names
    round_tripped = json.loads(json.dumps(s))
    assert round_tripped == s
    by_name = {entry["name"]: entry for entry in s["params"]}
    assert by_name["enabled"]["type"] == "boolean"
    assert by_name["prediction"]["type"] == "string"
    assert by_name["prediction"]["choices"] == ["Auto", "v-prediction", "eps"]
    assert by_name["cfg_rescale"]["type"] == "number"
    assert (by_name["cfg_rescale"]["minimum"], by_name["cfg_rescale"]["maximum"]) == (0.0, 1.0)
    for entry in s["params"]:
        assert entry["default"] == EXPECTED_DEFAULTS[entry["name"]]


# --- infotext ---------------------------------------------------------------------------------------------------


def _key(field: str) -> str:
    key = params.PARAMS_BY_NAME[field].infotext_key
    assert key is not None
    return key


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prediction", "v-prediction"),
        ("prediction", "eps"),
        ("ztsnr", "On"),
        ("ztsnr", "Off"),
        ("spacing", "Trailing"),
        ("spacing", "Schedule type"),
    ],
)
def test_parse_infotext_round_trips_formatted_values(field: str, value: str):
    written = params.format_infotext_value(value, auto=False)
    assert written == value
    assert params.parse_infotext({_key(field): written}) == {field: value, "enabled": True}


@pytest.mark.parametrize(("field", "value"), [("prediction", "v-prediction"), ("prediction", "eps"), ("ztsnr", "On")])
def test_parse_infotext_auto_suffix_restores_auto(field: str, value: str):
    written = params.format_infotext_value(value, auto=True)
    assert written == f"{value} (auto)"
    assert params.parse_infotext({_key(field): written})[field] == "Auto"
    assert params.parse_infotext({_key(field): written.upper()})[field] == "Auto"


def test_parse_infotext_full_line_round_trip_through_from_dict():
    effective = VPredParams(True, "v-prediction", "On", "Trailing", 0.35)
    infotext = {
        _key("prediction"): params.format_infotext_value("v-prediction", auto=False),
        _key("ztsnr"): params.format_infotext_value("On", auto=False),
        _key("spacing"): params.format_infotext_value("Trailing", auto=False),
        _key("cfg_rescale"): str(0.35),
    }
    assert params.from_dict(params.parse_infotext(infotext)) == effective


def test_parse_infotext_cfg_rescale():
    assert params.parse_infotext({_key("cfg_rescale"): "0.7"}) == {"cfg_rescale": 0.7, "enabled": True}
    assert params.parse_infotext({_key("cfg_rescale"): " 1 "})["cfg_rescale"] == 1.0
    assert params.parse_infotext({_key("cfg_rescale"): "5e-1"})["cfg_rescale"] == 0.5


@pytest.mark.parametrize("legacy", ["CFG Rescale", "CFG Rescale phi"])
def test_parse_infotext_legacy_keys(legacy: str):
    assert params.parse_infotext({legacy: "0.6"}) == {"cfg_rescale": 0.6, "enabled": True}
    # our key wins over the legacy one
    assert params.parse_infotext({legacy: "0.6", _key("cfg_rescale"): "0.2"})["cfg_rescale"] == 0.2
    assert params.parse_infotext({_key("cfg_rescale"): "0.2", legacy: "0.6"})["cfg_rescale"] == 0.2


def test_parse_infotext_invalid_own_value_falls_back_to_legacy():
    got = params.parse_infotext({_key("cfg_rescale"): "2.5", "CFG Rescale": "0.4"})
    assert got["cfg_rescale"] == 0.4


@pytest.mark.parametrize(
    "infotext",
    [
        {},
        {"Steps": "20", "Sampler": "Euler", "CFG scale": "7"},
        {"VPred prediction": "banana"},
        {"VPred ZTSNR": ""},
        {"VPred spacing": "leading"},
        {"VPred CFG rescale": "abc"},
        {"VPred CFG rescale": "nan"},
        {"VPred CFG rescale": "inf"},
        {"VPred CFG rescale": "1.5"},
        {"VPred CFG rescale": "-0.1"},
        {"CFG Rescale": "0.7.1"},
        {"CFG Rescale phi": ""},
    ],
)
def test_parse_infotext_skips_garbage(infotext: dict[str, str]):
    assert params.parse_infotext(infotext) == {}


def test_parse_infotext_garbage_next_to_good_values():
    got = params.parse_infotext({"VPred prediction": "banana", "VPred ZTSNR": "Off", "VPred CFG rescale": "x"})
    assert got == {"ztsnr": "Off", "enabled": True}
    params.from_dict(got)  # whatever parse_infotext returns is valid input for from_dict


def test_parse_infotext_output_always_valid():
    samples = [
        {"VPred prediction": "v (auto)", "VPred ZTSNR": "built-in", "VPred spacing": "schedule type"},
        {"VPred prediction": "epsilon", "VPred ZTSNR": "true", "CFG Rescale phi": "0"},
        {"VPred ZTSNR": "false", "VPred spacing": "Trailing (auto)"},
    ]
    for infotext in samples:
        got = params.parse_infotext(infotext)
        assert params.from_dict(got) == params.defaults().replace(**got)


@pytest.mark.parametrize(
    ("written", "restored"),
    [
        ("trailing (auto)", "Auto"),  # Auto resolved per sampler: pasting restores Auto, which resolves the same way
        ("exponential (auto)", "Auto"),
        ("trailing", "Trailing"),  # an explicit choice (and every infotext written before Auto existed)
        ("schedule type", "Schedule type"),
    ],
)
def test_parse_infotext_spacing(written: str, restored: str):
    assert params.parse_infotext({"VPred spacing": written}) == {"spacing": restored, "enabled": True}


def test_spacing_auto_is_appended_to_the_choices_not_to_the_positional_order():
    # Positional args are unchanged: spacing is still the fourth value, and the old values stay valid.
    assert [p.name for p in params.PARAMS][:5] == FIRST_FIVE
    assert params.from_args([True, "Auto", "Auto", "Trailing", 0.7]).spacing == "Trailing"
    assert params.from_args([True, "Auto", "Auto", "Schedule type"]).spacing == "Schedule type"
    assert params.from_args([True, "Auto", "Auto", "auto"]).spacing == "Auto"
    assert params.from_args([True]).spacing == "Auto"
