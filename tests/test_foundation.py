"""The shared helpers: atomic files, tables with provenance, random state, parameter checks."""

import os
import stat

import numpy as np
import pandas as pd
import pytest

from qtm.errors import QTMError
from qtm.io import (
    atomic_path,
    check_output_dir,
    check_output_file,
    check_table_path,
    read_provenance,
    write_json,
    write_table,
)
from qtm.provenance import provenance
from qtm.random import check_random_state, replicate_seeds
from qtm.validation import check_choice, check_int, check_positive, check_unit_interval


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


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_json_output_refuses_nan_and_infinity_and_names_the_file_and_the_value(tmp_path, bad):
    target = tmp_path / "x.json"
    with pytest.raises(QTMError, match=r"x\.json'.*checks/1/z/0 is -?(nan|inf)") as caught:
        write_json(target, {"checks": [{"z": 1.0}, {"z": np.array([bad, 1.0])}]})
    assert "\n" not in str(caught.value)
    with pytest.raises(QTMError, match=r"t\.parquet'.*cfg is"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet", provenance={"cfg": np.float32(bad)})
    assert list(tmp_path.iterdir()) == []


def test_output_paths_are_checked_before_any_work(tmp_path):
    a_file = tmp_path / "file.csv"
    a_file.write_text("")
    assert check_output_dir(tmp_path / "new" / "deeper", flag="--out") == tmp_path / "new" / "deeper"
    assert check_table_path(a_file, flag="--table") == a_file  # an existing file is replaced atomically
    with pytest.raises(QTMError, match=r"^--report .*file.csv' is a file; give a folder$"):
        check_output_dir(a_file, flag="--report")
    with pytest.raises(QTMError, match=r"^--out: .*file.csv' is a file, so .*sub' cannot be created$"):
        check_output_dir(a_file / "sub", flag="--out")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(QTMError, match=r"^--table .*dir.csv' is a folder; give a file name$"):
        check_table_path(tmp_path / "dir.csv", flag="--table")
    with pytest.raises(QTMError, match=r"^--json: .*file.csv' is a file"):
        check_output_file(a_file / "x.json", flag="--json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.csv", "file.csv"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_an_output_folder_without_write_permission_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(QTMError, match=r"^--out: no permission to write in .*locked'$"):
            check_output_dir(locked / "figures", flag="--out")
    finally:
        locked.chmod(0o700)


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
