"""Fast checks of chain run's inputs: data sets, parameters, seeds, the run directory and bad input at the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_cli_usage import run_main

from chain.data import load_dataset
from chain.errors import ChainError
from chain.run_parameters import RunParameters
from chain.rundir import RunDirectory
from chain.seeds import finetune_seed, image_seed
from qtm.errors import QTMError

pytestmark = pytest.mark.chain


def make_folder(root: Path, count: int = 3) -> Path:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        Image.new("L", (8, 8), 40 * i).save(root / f"img{i}.png")
        lines.append(json.dumps({"file_name": f"img{i}.png", "caption": f"a handwritten digit {i}"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_image_folder_loads_in_metadata_order(tmp_path):
    data = load_dataset(str(make_folder(tmp_path / "d")))
    assert data.file_names == ["img0.png", "img1.png", "img2.png"]
    assert data.captions[2] == "a handwritten digit 2"
    assert [image.getpixel((0, 0)) for image in data.images] == [0, 40, 80]


def test_digits_dataset():
    data = load_dataset("digits:30")
    assert len(data) == 30 and data.captions[0] == "a handwritten digit zero"
    assert data.images[0].mode == "L" and data.images[0].size == (8, 8)
    assert len(load_dataset("digits")) == 1797


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "metadata.jsonl").unlink(), "has no metadata.jsonl"),
        (lambda d: (d / "metadata.jsonl").write_text(""), "the data set is empty"),
        (lambda d: (d / "img1.png").write_bytes(b"not a png"), "does not decode"),
        (lambda d: (d / "img1.png").rename(d / "other.png"), "not in the folder"),
        (lambda d: (d / "extra.png").write_bytes((d / "img0.png").read_bytes()), "have no caption"),
        (lambda d: (d / "metadata.jsonl").write_text("{broken\n"), "not valid JSON"),
    ],
)
def test_bad_image_folder_is_one_clear_error(tmp_path, damage, message):
    folder = make_folder(tmp_path / "d")
    damage(folder)
    with pytest.raises(ChainError, match=message):
        load_dataset(str(folder))


def test_missing_folder_and_bad_digits_count(tmp_path):
    with pytest.raises(ChainError, match="is not a folder"):
        load_dataset(str(tmp_path / "nowhere"))
    with pytest.raises(ChainError, match="count must lie in"):
        load_dataset("digits:0")


def test_run_parameters_are_exactly_the_run_options_of_the_parameter_model():
    """RunParameters spells its fields out; qtm.params stays their one definition (names, order, defaults)."""
    import dataclasses

    from qtm.params import ALL_PARAMETERS, BACKEND_DEFAULTS, RUN_DEFAULTS, RUN_OPTIONS

    fields = dataclasses.fields(RunParameters)
    assert tuple(field.name for field in fields) == RUN_OPTIONS
    by_backend = {*BACKEND_DEFAULTS["tiny"], *BACKEND_DEFAULTS["sd"], "schedule", "drop"}  # None: decided by resolve
    for field in fields:
        default = RUN_DEFAULTS.get(field.name, ALL_PARAMETERS[field.name].default)
        expected = None if field.name in by_backend else default
        assert field.default == expected, field.name


def test_parameters_resolve_backend_defaults_and_redifine():
    resolved = RunParameters(cfg=3, redifine=True, device="cpu").resolve()
    assert resolved["drop"] == 0.2 and resolved["schedule"] == "cosine"
    assert resolved["train_steps"] == 150 and resolved["lora_rank"] is None and resolved["device"] == "cpu"
    sd = RunParameters(backend="sd", device="cpu").resolve()
    assert sd["lora_rank"] == 4 and sd["resolution"] is None
    assert RunParameters(backend="sd", full_finetune=True, device="cpu").resolve()["lora_rank"] is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cfg": -1.0}, "--cfg must be >= 0"),
        ({"drop": 1.5}, r"--drop must lie in \[0, 1\]"),
        ({"drop": -0.1}, "--drop must lie in"),
        ({"sampler": "euler"}, "the chain's backends sample with ddim or ddpm"),
        ({"iterations": 0}, "--iterations must be >= 1"),
        ({"schedule": "wiggly"}, "--schedule: unknown CFG schedule 'wiggly'"),
        ({"redifine": True, "drop": 0.1}, "either --redifine or those two"),
        ({"lora_rank": 4}, "tiny backend always finetunes the whole model"),
        ({"backend": "dalle"}, "unknown --backend"),
        ({"sampler": "bogus"}, "unknown --sampler"),
        ({"device": "tpu"}, "--device 'tpu' is not supported"),
        ({"backend": "sd", "preset": "rgb16"}, "--preset is for the tiny backend"),
        ({"backend": "sd", "text_encoder": "hashed"}, "--text-encoder is for the tiny backend"),
    ],
)
def test_bad_parameters(options, message):
    # The shared validators raise QTMError, ChainError's parent: both print as one line.
    with pytest.raises(QTMError, match=message):
        RunParameters(**options).resolve()


def test_seeds_depend_on_position_only():
    seeds = {image_seed(0, t, i, j) for t in range(3) for i in range(50) for j in range(2)}
    assert len(seeds) == 300  # all distinct
    assert image_seed(1, 0, 0) != image_seed(0, 0, 0)
    assert finetune_seed(0, 0) != finetune_seed(0, 1)


def test_run_directory_refuses_other_parameters(tmp_path):
    run = RunDirectory(tmp_path / "run")
    params = RunParameters(device="cpu").resolve()
    run.open(params, seed=0, extra={})
    assert json.loads(run.run_file.read_text())["parameters"]["cfg"] == 7.5
    run.open({**params, "iterations": 9}, seed=0, extra={})  # more iterations extend a run
    with pytest.raises(ChainError, match=r"cfg 7\.5 there, 3\.0 now"):
        run.open({**params, "cfg": 3.0}, seed=0, extra={})


def test_run_directory_completion_and_discard(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.start_iteration(0)
    run.write_iteration_record(0, {"status": "complete"})
    folder = run.start_iteration(1)
    (folder / "000000-0.png").write_bytes(b"half")
    assert run.completed() == [0]
    run.start_iteration(1)  # an unfinished iteration is cleared before it is redone
    assert list(folder.iterdir()) == []
    with pytest.raises(ChainError, match="is complete and is kept"):
        run.discard(0)


def test_an_interruption_as_an_iteration_completes_keeps_it_and_stays_an_interruption(tmp_path, monkeypatch):
    """Ctrl-C that lands after an iteration's record says complete (found by the kill test in tests/test_faults.py)
    must not discard it, nor turn the interruption into the error that a complete iteration cannot be discarded."""
    from chain import runner

    def completes_then_interrupted(run, t, *args):
        run.start_iteration(t)
        run.write_iteration_record(t, {"status": "complete"})
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_iteration", completes_then_interrupted)
    run = RunDirectory(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        runner._loop(run, {"iterations": 2}, data=None, backend=None, reporter=None)
    assert run.completed() == [0]


def test_a_run_killed_while_writing_run_json_starts_again(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".run.json.abc123.part").write_text('{"half')
    RunDirectory(tmp_path / "run").open({"cfg": 1.0}, seed=0, extra={})
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["run.json"]


def test_a_foreign_directory_is_not_taken_over(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(ChainError, match=r"has no run\.json"):
        RunDirectory(tmp_path / "run").open({}, seed=0, extra={})


@pytest.fixture
def chain_cli(monkeypatch, capsys):
    """``chain run ARGS`` through the program's entry point, in-process: its exit status and stderr (the installed
    programs' own exit path is test_cli_usage's)."""
    from commands.chain_program import main

    def run(*args):
        status, out, err = run_main(monkeypatch, capsys, main, "chain", "run", *map(str, args))
        return subprocess.CompletedProcess(args, status, out, err)

    return run


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cfg", "-1"], "--cfg must be >= 0"),
        (["--drop", "1.5"], "--drop must lie in"),
        (["--iterations", "0"], "--iterations must be >= 1"),
        (["--schedule", "wiggly"], "unknown CFG schedule"),
        (["--data", "MISSING"], "is not a folder"),
        (["--device", "cuda"], "no CUDA GPU is available"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(chain_cli, tmp_path, args, message):
    """Each refusal happens before anything is written: the run directory is never created."""
    args = [a.replace("MISSING", str(tmp_path / "missing")) for a in args]
    if "--device" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present here")
    done = chain_cli(tmp_path / "run", *args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chain: error:") and message in lines[0]
    assert not (tmp_path / "run").exists()


def test_cli_config_file(chain_cli, tmp_path):
    (tmp_path / "bad.toml").write_text("colour = 'red'\n")
    done = chain_cli(tmp_path / "run", "--config", tmp_path / "bad.toml")
    assert done.returncode == 2 and "unknown option 'colour'" in done.stderr
    (tmp_path / "neg.toml").write_text("cfg = -2.0\n")
    done = chain_cli(tmp_path / "run", "--config", tmp_path / "neg.toml")
    assert done.returncode == 2 and "--cfg must be >= 0" in done.stderr
    assert not (tmp_path / "run").exists()


def test_cli_sd_model_that_is_not_a_diffusers_model(chain_cli, tmp_path):
    """The sd backend is built before the run directory is made, so a bad --model leaves nothing behind."""
    (tmp_path / "not-a-model").mkdir()
    done = chain_cli(tmp_path / "run", "--backend", "sd", "--model", tmp_path / "not-a-model", "--device", "cpu",
                     "--data", make_folder(tmp_path / "data"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "not a diffusers model" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()
