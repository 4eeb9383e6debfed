"""Issue 23's hostile probes of ``chain data`` and ``chain run``, kept as tests so that a new option cannot reopen them.

Each probe goes through the program's entry point (``commands.chain_program.main``, in-process) and must
end in one line on stderr with the exit status docs/errors.md promises: 2 for bad input, 1 for a full
disk. Runs use a fake backend (no torch training), so every test takes well under two seconds.

Hypothesis: the data-spec fuzz runs the profile ``HYPOTHESIS_PROFILE`` names (tests/conftest.py): 40 fixed
examples in the normal suite, 500 with ``fuzz`` (``make fuzz``).
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from test_cli_usage import error_lines, run_main

from chain import runner
from chain.backends.base import Backend, FinetuneResult
from chain.data import check_data_spec, describe_dataset, load_dataset
from chain.errors import ChainError
from chain.run_parameters import RunParameters
from commands.chain_program import main
from qtm.errors import QTMError

#: The profile of this module's fuzz tests: ``HYPOTHESIS_PROFILE=fuzz`` for the long run.
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))

FAST = ("--iterations", "1", "--train-steps", "1", "--steps", "1", "--device", "cpu")
DISK_FULL = "no space left on the device while writing the run"
#: The cores this process may use, as chain.backends.tiny_loops.cpu_threads counts them.
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def chain(monkeypatch, capsys, *args):
    """``chain ARGS`` through the entry point: (exit status, stdout, stderr)."""
    return run_main(monkeypatch, capsys, main, "chain", *map(str, args))


def one_error(status: int, stderr: str, expected_status: int) -> str:
    """The one error line of a refused command, checked: the expected status, no traceback, nothing else."""
    assert status == expected_status, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and len(error_lines(stderr)) == 1, stderr
    return lines[0]


class FakeBackend(Backend):
    """A backend without a network: a finetuning whose loss diverges above ``diverge_above``, grey images, and
    weights saved through the tiny backend's writer (so that a full disk reaches it as it would a real run)."""

    name = "fake"

    def __init__(self, learning_rate: float, *, diverge_above: float = 0.1, fail=None):
        self.learning_rate, self.diverge_above, self.fail = learning_rate, diverge_above, fail

    def finetune(self, images, captions, *, drop, start, seed, progress=None):
        if self.fail is not None:
            raise self.fail
        loss = float("nan") if self.learning_rate > self.diverge_above else 0.5
        return FinetuneResult(losses=[loss], seconds=0.0)

    def generate(self, captions, *, cfg, schedule, seeds, steps, sampler, progress=None):
        return [Image.new("L", (8, 8), seed % 256) for seed in seeds]

    def save_weights(self, directory: Path) -> dict:
        import torch

        from chain.backends.tiny_base import save_state

        directory.mkdir(parents=True, exist_ok=True)
        save_state({"w": torch.zeros(4)}, directory / "model.pt")
        return {"kind": "full", "file": "model.pt"}

    def load_weights(self, directory: Path) -> None:
        pass


@pytest.fixture
def fake_backend(monkeypatch):
    """Make ``chain run`` build a :class:`FakeBackend`; the dict it returns sets its options."""
    options = {}
    monkeypatch.setattr(runner, "make_backend",
                        lambda params, **_: FakeBackend(params["learning_rate"], **options))
    return options


def grey_or_colour_folder(root: Path, *, mode: str, size: int, count: int = 2) -> Path:
    root.mkdir(parents=True)
    lines = []
    for i in range(count):
        Image.new(mode, (size, size), (i * 40,) * len(mode)).save(root / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "caption": f"picture {i}"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


# ------------------------------------------------------------------------------------------- data specs (1, 3)

BAD_SPECS = {
    "negative min": ("emoji?min=-3", "min= must be at least 0 images per concept"),
    "negative min, pokemon": ("pokemon:16?min=-1", "min= must be at least 0 images per concept"),
    "max zero": ("emoji?max=0", "max= must be at least 1 image per concept"),
    "repeated key": ("emoji:32?max=24&max=2", "max= is given 2 times; give each option once"),
    "repeated hf key": ("hf:user/name?caption=a&caption=b", "caption= is given 2 times; give each option once"),
    "empty": ("", "--data is empty"),
    "too long": ("d" * 5000, "--data: the path 'dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd…' "
                             "(5000 characters) is longer than the 4095 bytes"),
    "too long a name in a path": ("runs/" + "n" * 300 + "/data", "(300 characters) is longer than the 255 bytes"),
    "too long a Hugging Face name": ("hf:/tmp/" + "h" * 300, "(300 characters) is longer than the 255 bytes"),
    "long option value": ("emoji?caption=" + "c" * 3000, "caption=" + "c" * 60 + "… is not one of"),
}


@pytest.mark.parametrize(("spec", "message"), BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_chain_data_refuses_a_bad_spec_in_one_short_line(monkeypatch, capsys, spec, message):
    status, out, err = chain(monkeypatch, capsys, "data", spec)
    line = one_error(status, err, 2)
    assert message in line and len(line) < 400 and not out


@pytest.mark.parametrize(("spec", "message"), BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_chain_run_refuses_a_bad_spec_before_the_run_directory_exists(monkeypatch, capsys, tmp_path, spec, message):
    status, _, err = chain(monkeypatch, capsys, "run", tmp_path / "run", "--data", spec, *FAST)
    line = one_error(status, err, 2)
    assert message in line and len(line) < 400
    assert not (tmp_path / "run").exists()


def test_the_spec_check_loads_nothing(monkeypatch):
    """Emoji and Pokémon specs are checked without their npm packages (the loaders are never reached)."""
    from chain import npm_data

    monkeypatch.setattr(npm_data, "fetch_package", lambda package: pytest.fail("fetched a package"))
    assert check_data_spec("emoji:32?min=0&max=24&skin=yes&caption=name") == "emoji"
    assert check_data_spec("pokemon:64?min=40&max=24") == "pokemon"
    with pytest.raises(ChainError, match="min= must be at least 0"):
        RunParameters(data="emoji?min=-3", device="cpu").resolve()


# ----------------------------------------------------------------------------------------------- --captions (2)

def test_chain_data_refuses_a_negative_caption_count(monkeypatch, capsys):
    status, out, err = chain(monkeypatch, capsys, "data", "digits:20", "--captions", "-1")
    assert one_error(status, err, 2) == "chain: error: --captions must be >= 0 (how many captions to list), got -1"
    assert not out


def test_chain_data_with_no_captions_prints_the_summary_only():
    assert describe_dataset("digits:20", max_captions=0).splitlines() == [
        "digits:20: 20 images, 8x8 L, 10 captions", "  ... and 10 more captions"]


# ------------------------------------------------------------------------------------------ --learning-rate (4)

def test_an_absurd_learning_rate_is_refused_before_the_run_directory_exists(monkeypatch, capsys, tmp_path):
    status, _, err = chain(monkeypatch, capsys, "run", tmp_path / "run", "--learning-rate", "1e30", *FAST)
    assert one_error(status, err, 2) == "chain: error: --learning-rate must lie in (0, 1], got 1e+30"
    assert not (tmp_path / "run").exists()


def test_the_divergence_advice_works_when_followed_literally(monkeypatch, capsys, tmp_path, fake_backend):
    """A diverged run says which rate to try and where; that command then runs (the same directory would refuse
    the new rate, since it keeps the parameters it was made with)."""
    run = tmp_path / "run"
    status, _, err = chain(monkeypatch, capsys, "run", run, "--data", "digits:4", "--learning-rate", "0.5", *FAST)
    line = one_error(status, err, 2)
    assert "diverged" in line and "rerun in a new run directory" in line
    advised = re.search(r"--learning-rate (\S+)$", line).group(1)
    assert advised == "0.001"
    status, _, err = chain(monkeypatch, capsys, "run", run, "--data", "digits:4", "--learning-rate", advised, *FAST)
    assert "made with different parameters" in one_error(status, err, 2)
    status, _, err = chain(monkeypatch, capsys, "run", tmp_path / "new", "--data", "digits:4",
                           "--learning-rate", advised, *FAST)
    assert status == 0, err
    assert (tmp_path / "new" / "iter-000" / "iteration.json").is_file()


def test_below_the_default_the_advice_is_a_tenth():
    line = runner.diverged_advice(2, {"backend": "sd", "learning_rate": 5e-5}, Path("runs/x"))
    assert line.startswith("iteration 2: the finetuning diverged") and line.endswith("--learning-rate 5e-06")


# ------------------------------------------------------------------------------------------------ full disk (5)

def test_a_full_disk_is_a_failure_with_exit_1(monkeypatch, capsys, tmp_path, fake_backend):
    """The 8 kB disk: an ``OSError(ENOSPC)`` anywhere in the run."""
    fake_backend["fail"] = OSError(errno.ENOSPC, "No space left on device")
    status, _, err = chain(monkeypatch, capsys, "run", tmp_path / "run", "--data", "digits:4", *FAST)
    line = one_error(status, err, 1)
    assert DISK_FULL in line and line.endswith("free some space and rerun the same command to resume")


def test_a_full_disk_inside_torch_save_is_the_same_one_line_failure(monkeypatch, capsys, tmp_path, fake_backend):
    """The 40 kB disk: torch's archive writer reports the refused write as a RuntimeError of its own."""
    import shutil

    import torch

    def save(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(40_960, 40_960, 0))
    status, _, err = chain(monkeypatch, capsys, "run", tmp_path / "run", "--data", "digits:4", *FAST)
    line = one_error(status, err, 1)
    assert DISK_FULL in line and line.endswith("rerun the same command to resume")
    assert not list((tmp_path / "run").rglob("*.pt")) and not list((tmp_path / "run").rglob("*.part"))


def test_another_torch_save_error_is_not_taken_for_a_full_disk(monkeypatch, tmp_path):
    import torch

    from chain.backends.tiny_base import save_state

    def save(*args, **kwargs):
        raise RuntimeError("something else broke")

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(RuntimeError, match="something else broke"):
        save_state({"w": torch.zeros(4)}, tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- CHAIN_THREADS (6)

def test_more_threads_than_cores_are_refused(monkeypatch, capsys, tmp_path):
    cores = CORES
    monkeypatch.setenv("CHAIN_THREADS", "999")
    status, _, err = chain(monkeypatch, capsys, "run", tmp_path / "run", "--data", "digits:4", *FAST)
    assert one_error(status, err, 2) == (
        f"chain: error: CHAIN_THREADS=999 is more threads than the {cores} CPU core(s) this process may use; "
        f"set at most {cores} or unset it (one thread)")
    assert not (tmp_path / "run").exists()


def test_as_many_threads_as_cores_are_taken(monkeypatch):
    from chain.backends.tiny_loops import cpu_threads

    monkeypatch.setenv("CHAIN_THREADS", str(CORES))
    assert cpu_threads() == CORES


# ------------------------------------------------------------------------------------------- digits8 preset (7)

def test_a_colour_set_on_the_grey_preset_gets_one_warning(monkeypatch, capsys, tmp_path, fake_backend):
    data = grey_or_colour_folder(tmp_path / "emoji7", mode="RGB", size=7)
    status, _, err = chain(monkeypatch, capsys, "run", tmp_path / "run", "--data", data, *FAST)
    assert status == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert warnings == [
        f"chain: warning: --preset digits8 (the default) turns the 7x7 RGB images of {str(data)!r} into 8x8 grey; "
        "give --preset rgb16, rgb32 or rgb64 for colour images of that side"]


def test_the_warning_names_emoji_and_not_the_digits():
    emoji = load_dataset("digits:2")
    emoji.images, emoji.source = [Image.new("RGB", (7, 7))] * 2, "emoji:7"
    assert "the 7x7 RGB images of 'emoji:7' into 8x8 grey" in runner.preset_warning(
        {"backend": "tiny", "preset": "digits8"}, emoji)
    assert runner.preset_warning({"backend": "tiny", "preset": None}, load_dataset("digits:2")) is None
    assert runner.preset_warning({"backend": "tiny", "preset": "rgb16"}, emoji) is None


# --------------------------------------------------------------------------------------------- spec fuzzing (8)

SPEC_WORDS = st.sampled_from(["digits", "emoji", "pokemon", "hf:", "hf:user/name", "./emoji", "", ":", "?", "&", "=",
                              "min", "max", "caption", "skin", "image", "config", "name", "type", "subcategory",
                              "yes", "no", "-3", "0", "1", "24", "1797", "1798", "4", "512", "513", "x", "1e3", "+2",
                              "٣", "1_0", " ", "\x00", "\n", "é", "🙂", "\ud800", "/", "..", "train[:10]"])
SPECS = st.one_of(
    st.lists(SPEC_WORDS, max_size=10).map("".join),
    st.builds(lambda name, res, pairs: name + (f":{res}" if res is not None else "")
              + ("?" + "&".join(f"{k}={v}" for k, v in pairs) if pairs else ""),
              st.sampled_from(["digits", "emoji", "pokemon", "hf:x"]),
              st.one_of(st.none(), st.integers(-10, 2000), st.text(max_size=4)),
              st.lists(st.tuples(st.sampled_from(["min", "max", "caption", "skin", "image", "config", "res"]),
                                 st.one_of(st.integers(-5, 50).map(str), st.text(max_size=5))), max_size=4)),
    st.text(max_size=40),
    st.integers(250, 6000).map(lambda n: "a" * n),
    st.integers(250, 6000).map(lambda n: "emoji?caption=" + "b" * n),
)


@PROFILE
@given(spec=SPECS)
def test_fuzz_a_data_spec_is_a_kind_or_one_short_line(spec):
    """The check returns a kind or raises a one-line error of a few hundred characters at most; a digits or
    folder spec is also loaded (fast; emoji, Pokémon and Hugging Face specs are only checked)."""
    try:
        kind = check_data_spec(spec)
        assert kind in ("digits", "hf:", "emoji", "pokemon", "folder")
        if kind in ("digits", "folder"):
            data = load_dataset(spec)
            assert len(data) >= 1
    except QTMError as error:
        text = str(error)
        assert "\n" not in text and "\r" not in text and len(text) < 600, text
    except OSError as error:  # a system refusal (permissions) stays an OSError, exit status 1, one line
        assert error.errno not in (errno.ENAMETOOLONG,), error


def test_fuzz_found_these_before(monkeypatch, capsys):
    """Specs that once escaped as other exceptions: a NUL character, a lone surrogate, a long name."""
    for spec in ("\x00", "a\x00b", "\ud800", "x/" + "y" * 256, "emoji?caption=\n"):
        with pytest.raises(QTMError):
            load_dataset(spec)
    assert np.all([check_data_spec(s) == "digits" for s in ("digits", "digits:1", "digits:1797")])
