"""The shared helpers: atomic files, tables with provenance, random state, parameter checks."""

import os
import stat

import numpy as np
import pandas as pd
import pytest

from qtm.validation import check_choice, check_int, check_positive, check_unit_interval
from qtm.errors import QTMError
from qtm.io import atomic_path, read_provenance, write_json, write_table
from qtm.provenance import provenance
from qtm.random import check_random_state, replicate_seeds


def test_atomic_path_leaves_nothing_behind_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_file_gets_the_permissions_of_any_new_file(tmp_path):
    target = tmp_path / "x.json"
    write_json(target, {"a": np.float64(1.5), "b": np.arange(2)})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~mask
    assert target.read_text().startswith("{")


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_tables_round_trip_with_their_provenance(tmp_path, suffix):
    frame = pd.DataFrame({"cfg": [1.0, 7.5], "var": [0.9, 0.01]})
    record = provenance({"cfg": [1.0, 7.5]}, seed=3)
    path = write_table(frame, tmp_path / f"t{suffix}", provenance=record)
    back = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
    pd.testing.assert_frame_equal(back, frame)
    stored = read_provenance(path)
    assert stored["parameters"] == {"cfg": [1.0, 7.5]}
    assert stored["seed"] == 3
    assert "numpy" in stored["versions"]


def test_table_suffix_is_checked(tmp_path):
    with pytest.raises(QTMError, match=r"\.parquet or \.csv"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.xlsx")
    assert list(tmp_path.iterdir()) == []


def test_random_state_helper():
    assert check_random_state(5).integers(1 << 30) == check_random_state(5).integers(1 << 30)
    generator = np.random.default_rng(0)
    assert check_random_state(generator) is generator
    with pytest.raises(QTMError, match="seed"):
        check_random_state(-1)
    with pytest.raises(QTMError, match="random_state"):
        check_random_state("seven")


def test_replicate_seeds_do_not_depend_on_chunking():
    whole = replicate_seeds(11, 10)
    chunks = np.concatenate([replicate_seeds(11, 4), replicate_seeds(11, 6, offset=4)])
    np.testing.assert_array_equal(whole, chunks)
    assert len(set(whole.tolist())) == 10
    assert not np.array_equal(whole, replicate_seeds(12, 10))


def test_parameter_checks_name_the_parameter():
    with pytest.raises(QTMError, match="cond_var must be > 0"):
        check_positive([1.0, -2.0], "cond_var")
    with pytest.raises(QTMError, match="must be finite"):
        check_positive(np.nan, "cond_var")
    with pytest.raises(QTMError, match=r"drop must lie in \[0, 1\)"):
        check_unit_interval(1.0, "drop", closed_right=False)
    with pytest.raises(QTMError, match="whole number"):
        check_int(2.5, "steps", minimum=1)
    with pytest.raises(QTMError, match="steps must be >= 1"):
        check_int(0, "steps", minimum=1)
    with pytest.raises(QTMError, match="unknown sampler 'euler'; choose one of: ddim, ddpm"):
        check_choice("euler", "sampler", ("ddim", "ddpm"))
