"""The run-directory layout has one definition: what chain.rundir writes is what qtm.rundir reads."""

import json

import numpy as np
import pytest
from PIL import Image

from chain import rundir as chain_rundir
from chain.reference import REFERENCE_TAG, reference_seeds
from chain.rundir import RunDirectory
from qtm import rundir
from qtm.errors import RunDirectoryError
from qtm.random import derive_seed


def test_chain_reexports_the_layout_of_qtm():
    for name in ("RUN_FILE", "ITERATION_FILE", "METADATA_FILE", "COMPLETE"):
        assert getattr(chain_rundir, name) == getattr(rundir, name)


def test_what_chain_writes_qtm_reads(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.open({"cfg": 5.0, "schedule": "constant"}, seed=3, extra={})
    for t, status in ((0, rundir.COMPLETE), (1, rundir.COMPLETE), (2, "running")):
        folder = run.start_iteration(t)
        Image.new("L", (2, 2)).save(folder / "000000-0.png")
        (folder / rundir.METADATA_FILE).write_text(json.dumps({"file_name": "000000-0.png", "caption": "a cat"}))
        run.write_iteration_record(t, {"status": status})
    assert run.completed() == [0, 1]
    read = rundir.read_run(run.path)
    assert read.cfg == 5.0 and read.params["seed"] == 3
    assert sorted(read.iterations) == [0, 1] and read.iterations[1].captions == ["a cat"]
    assert read.skipped == ["iter-002 (running)"]
    assert rundir.iteration_status(run.iteration_dir(2)) == "running"


def test_unreadable_iteration_records_and_run_files(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.open({}, seed=0, extra={})
    (run.start_iteration(0) / rundir.ITERATION_FILE).write_text("[1, 2]")  # JSON, but not an object
    assert rundir.iteration_status(run.iteration_dir(0)) == "unreadable iteration.json"
    assert run.completed() == []
    (run.path / rundir.RUN_FILE).write_text("{half")
    with pytest.raises(RunDirectoryError, match="is not valid JSON"):
        rundir.read_run(run.path)


def test_reference_seeds_are_the_shared_derivation():
    # The scheme the reference images were generated with before chain.reference existed.
    old = [int(np.random.SeedSequence([7, 0x5EF, i]).generate_state(1, dtype=np.uint32)[0]) for i in range(20)]
    assert reference_seeds(7, 20) == old == [derive_seed(7, REFERENCE_TAG, i) for i in range(20)]
