"""Grid parsing: comma lists, ranges, Cartesian products, per-axis options and TOML config files."""

import numpy as np
import pytest

from qtm.errors import QTMError
from qtm.grid import grid_frame, load_config, merge_options, parse_axes, parse_numbers, parse_strings
from qtm.params import ALL_PARAMETERS, PARAMETERS


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("7.5", [7.5]),
        ("1,3, 7.5", [1.0, 3.0, 7.5]),
        ("0:1:0.25", [0.0, 0.25, 0.5, 0.75, 1.0]),
        ("1:2:0.4", [1.0, 1.4, 1.8]),
        ("2:2:1", [2.0]),
        ("3:1:-1", [3.0, 2.0, 1.0]),
        ("0,2:4:1,10", [0.0, 2.0, 3.0, 4.0, 10.0]),
        (2.5, [2.5]),
        ([1, "2:3:1"], [1.0, 2.0, 3.0]),
    ],
)
def test_parse_numbers(spec, expected):
    assert parse_numbers(spec, name="cfg") == expected


def test_range_includes_a_stop_reached_up_to_rounding():
    values = parse_numbers("0:1:0.1", name="drop")
    assert len(values) == 11
    assert values[3] == 0.3 and values[-1] == 1.0


def test_integer_options():
    assert parse_numbers("10:30:10", name="steps", integer=True) == [10, 20, 30]
    with pytest.raises(QTMError, match="--steps must be whole numbers"):
        parse_numbers("2.5", name="steps", integer=True)


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("1:5:0", "step 0"),
        ("1:5:-1", "never reaches its stop"),
        ("5:1:1", "never reaches its stop"),
        ("1:5", "start:stop:step"),
        ("1,x", "'x' is not a number"),
        ("nan", "finite"),
        ("", "at least one value"),
        (True, "must be numbers"),
    ],
)
def test_bad_numbers_name_the_option(spec, pattern):
    with pytest.raises(QTMError, match=pattern) as error:
        parse_numbers(spec, name="real_fraction")
    assert "--real-fraction" in str(error.value)


def test_text_values_keep_their_colons():
    assert parse_strings("constant, cutoff:0.5,interval:0.3:5", name="schedule") == [
        "constant", "cutoff:0.5", "interval:0.3:5",
    ]
    assert parse_strings(["cosine", "linear:2"], name="schedule") == ["cosine", "linear:2"]
    with pytest.raises(QTMError, match="empty item"):
        parse_strings(" , ", name="schedule")
    with pytest.raises(QTMError, match="empty item"):
        parse_numbers("1,,2", name="cfg")


def test_grid_is_the_cartesian_product_first_axis_slowest():
    frame = grid_frame({"cfg": [1.0, 7.5], "schedule": ["constant", "cosine"], "steps": [50]})
    assert list(frame.columns) == ["cfg", "schedule", "steps"]
    assert frame.to_dict("list") == {
        "cfg": [1.0, 1.0, 7.5, 7.5],
        "schedule": ["constant", "cosine", "constant", "cosine"],
        "steps": [50, 50, 50, 50],
    }


def test_parse_axes_broadcasts_single_values():
    axes = parse_axes({"cond_mean": "1,2,3", "cond_var": "0.5", "data_var": [1, 2, 3]})
    np.testing.assert_array_equal(axes["cond_var"], [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(axes["data_var"], [1.0, 2.0, 3.0])
    with pytest.raises(QTMError, match="--cond-var gives 2 values but another model option gives 3"):
        parse_axes({"cond_mean": "1,2,3", "cond_var": "1,2"})
    with pytest.raises(QTMError, match="--data-mean: 'one' is not a number"):
        parse_axes({"data_mean": "one"})


def test_load_config_reads_option_names(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('cfg = [1, 3.5]\nschedule = "constant,cosine"\nreal-fraction = 0.1\niterations = "2:4:1"')
    config = load_config(path, allowed={name: PARAMETERS[name] for name in ("cfg", "schedule", "real_fraction",
                                                                            "iterations")})
    expected = {"cfg": [1, 3.5], "schedule": "constant,cosine", "real_fraction": 0.1, "iterations": "2:4:1"}
    assert config == expected
    assert parse_numbers(config["iterations"], name="iterations", integer=True) == [2, 3, 4]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("colour = 1\n", "unknown option 'colour'"),
        ("cfg = \n", "not valid TOML"),
        ("[cfg]\nvalue = 1\n", "not a table"),
    ],
)
def test_bad_config(tmp_path, text, pattern):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(QTMError, match=pattern):
        load_config(path, allowed={"cfg": PARAMETERS["cfg"]})


def test_missing_config(tmp_path):
    with pytest.raises(QTMError, match="does not exist"):
        load_config(tmp_path / "none.toml", allowed=["cfg"])
    with pytest.raises(QTMError, match="cannot be read"):
        load_config(tmp_path, allowed=["cfg"])


def test_command_line_overrides_config_overrides_defaults():
    merged = merge_options(
        {"cfg": "2", "drop": None, "steps": None},
        {"cfg": [5], "drop": 0.2},
        {"cfg": "7.5", "drop": "0", "steps": "50"},
    )
    assert merged == {"cfg": "2", "drop": 0.2, "steps": "50"}


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('redifine = "false"', "must be true or false"),
        ("cfg = true", "must be a number"),
        ("iterations = 2.5", "must be a whole number"),
        ("schedule = 3", "must be a text"),
        ("cfg = []", "at least one value"),
    ],
)
def test_config_values_are_type_checked_like_flags(tmp_path, text, pattern):
    """A value from a file has its parameter's type exactly (bool("false") is True: never convert)."""
    path = tmp_path / "c.toml"
    path.write_text(text + "\n")
    with pytest.raises(QTMError, match=pattern):
        load_config(path, allowed=ALL_PARAMETERS)


def test_config_file_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(b"cfg = 1\n# \xff\xfe\n")
    with pytest.raises(QTMError, match=r"UTF-8|not valid TOML"):
        load_config(path, allowed=ALL_PARAMETERS)
