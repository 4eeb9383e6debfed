"""The tiny backend and whole chain runs with it, at a reduced size (a quickly trained base model).

The session fixture trains one reduced base model into a temporary cache and also
stores it under the name of the default configuration, so that ``chain run``
children (forked, through the program's entry point) pick it up instead of training the full-size base model.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import build_once
from test_faults import cli_child, in_child, stop
from test_faults import wait as wait_for

torch = pytest.importorskip("torch")

from chain.backends.tiny import TinyBackend  # noqa: E402
from chain.backends.tiny_base import base_model  # noqa: E402
from chain.backends.tiny_config import TinyConfig  # noqa: E402
from chain.data import DIGIT_WORDS  # noqa: E402
from chain.run_parameters import RunParameters  # noqa: E402
from chain.rundir import RunDirectory  # noqa: E402
from chain.runner import run_chain  # noqa: E402
from chain.text_encoders import HashTextEncoder, caption_words  # noqa: E402
from qtm.schedules import CFGSchedule  # noqa: E402

# One worker runs them all: they share the reduced base model, which the others would wait for.
pytestmark = [pytest.mark.chain, pytest.mark.xdist_group("tiny-chain")]

#: The reduced base model of these tests: enough training for recognisable digits.
REDUCED = TinyConfig(base_train_steps=300)
DIGIT_CAPTIONS = [f"a handwritten digit {word}" for word in DIGIT_WORDS]


def _train_reduced(cache: Path) -> None:
    os.environ["CHAIN_TINY_CACHE"] = str(cache)
    state = base_model(REDUCED).state
    torch.save(state, cache / f"tiny-{TinyConfig().key()}.pt")


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """A cache directory holding the reduced base model, also under the default configuration's name
    (trained once for all test workers)."""
    old = os.environ.get("CHAIN_TINY_CACHE")
    cache = build_once(tmp_path_factory, "tiny-cache", _train_reduced)
    os.environ["CHAIN_TINY_CACHE"] = str(cache)
    yield cache
    if old is None:
        del os.environ["CHAIN_TINY_CACHE"]
    else:
        os.environ["CHAIN_TINY_CACHE"] = old


@pytest.fixture(scope="session")
def backend(tiny_cache):
    return TinyBackend(config=REDUCED, train_steps=40, batch_size=32)


def digit_classifier():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    return LogisticRegression(max_iter=2000).fit(digits.data / 16.0, digits.target)


def as_features(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=float).ravel() / 255.0 for image in images])


def test_text_encoder_null_condition_and_no_collisions():
    encoder = HashTextEncoder(TinyConfig().vocabulary, 8)
    assert torch.equal(encoder([""]), torch.zeros(1, 8))
    words = {w for caption in DIGIT_CAPTIONS for w in caption_words(caption)}
    buckets = {__import__("zlib").crc32(w.encode()) % TinyConfig().vocabulary for w in words}
    assert len(buckets) == len(words)  # no two digit words share an embedding


def test_base_model_is_cached_not_retrained(tiny_cache):
    path = tiny_cache / f"tiny-{REDUCED.key()}.pt"
    stamp = path.stat().st_mtime_ns
    again = base_model(REDUCED).state
    assert path.stat().st_mtime_ns == stamp
    assert all(torch.equal(v, again[k]) for k, v in torch.load(path, weights_only=True).items())


def test_generated_digits_are_recognisable(backend):
    """Digits drawn at CFG 3 are read as the digit their caption names.

    Deterministic (fixed seeds, deterministic CPU kernels); the bar of 70 % lies well
    under the measured accuracy of the reduced base model, so a fail means the model
    or the guidance broke, not bad luck.
    """
    backend.model.load_state_dict(backend.base_state)
    captions = [c for c in DIGIT_CAPTIONS for _ in range(10)]
    images = backend.generate(captions, cfg=3.0, schedule=CFGSchedule(), seeds=range(100), steps=20, sampler="ddim")
    predicted = digit_classifier().predict(as_features(images))
    accuracy = float(np.mean(predicted == np.repeat(np.arange(10), 10)))
    assert accuracy >= 0.7, accuracy


def test_same_seeds_same_images_and_weights(backend):
    images = [backend.generate(DIGIT_CAPTIONS[:3], cfg=2.0, schedule=CFGSchedule.parse("cosine"),
                               seeds=[5, 6, 7], steps=6, sampler="ddpm") for _ in range(2)]
    assert [im.tobytes() for im in images[0]] == [im.tobytes() for im in images[1]]
    states = []
    for _ in range(2):
        backend.finetune(images[0], DIGIT_CAPTIONS[:3], drop=0.2, start="base", seed=3)
        states.append({k: v.clone() for k, v in backend.model.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    backend.model.load_state_dict(backend.base_state)


def within_class_variance(run_dir: Path, iteration: int) -> float:
    """Trait statistic: total pixel variance among the images of one caption, averaged over captions."""
    run = RunDirectory(run_dir)
    rows = run.read_metadata(iteration)
    from PIL import Image

    features = as_features([Image.open(run.iteration_dir(iteration) / r["file_name"]) for r in rows])
    labels = np.array([r["caption"] for r in rows])
    return float(np.mean([features[labels == c].var(axis=0).sum() for c in np.unique(labels)]))


def test_chain_collapses_at_high_cfg_not_near_one(tiny_cache, tmp_path):
    """Over three iterations the within-caption variance shrinks at CFG 7.5 and holds near CFG 1.

    Deterministic (fixed seeds). The thresholds leave wide margins around the measured
    ratios (CFG 7.5: well under 0.8; CFG 1: near 1), so the false-failure rate is nil
    for this fixed seed; a different model build could move them.
    """
    ratios = {}
    for cfg in (1.0, 7.5):
        params = RunParameters(data="digits:100", cfg=cfg, iterations=3, finetune="continue", train_steps=60,
                               batch_size=32, steps=10, seed=1, device="cpu")
        run_chain(tmp_path / f"cfg{cfg}", params)
        ratios[cfg] = within_class_variance(tmp_path / f"cfg{cfg}", 2) / within_class_variance(
            tmp_path / f"cfg{cfg}", 0)
    assert ratios[7.5] < 0.8, ratios
    assert ratios[1.0] > 0.85, ratios
    assert ratios[7.5] < ratios[1.0] - 0.15, ratios


CLI_ARGS = ("--data", "digits:60", "--iterations", "3", "--train-steps", "12", "--batch-size", "16",
            "--steps", "6", "--cfg", "3", "--seed", "4", "--device", "cpu")


def chain_run(run_dir, *extra, wait=True, target=cli_child):
    """``chain run RUN_DIR CLI_ARGS EXTRA`` through the program's entry point in a forked child (no interpreter
    start and torch import per run): (exit status, stderr), or the child's pid when not ``wait``."""
    stderr = Path(run_dir).with_name(f"{Path(run_dir).name}.{next(_RUNS)}.stderr")
    pid = in_child(target, ["run", str(run_dir), *CLI_ARGS, *extra], stderr)
    if not wait:
        return pid
    code = wait_for(pid, timeout=300)
    return code, stderr.read_text()


_RUNS = itertools.count()


def full_disk_child(argv, stderr) -> None:
    """:func:`cli_child` on a disk that fills as the images are renamed into place (os.replace raises ENOSPC)."""
    real = os.replace

    def full(src, dst, *args, **kwargs):
        if str(dst).endswith(".png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *args, **kwargs)

    os.replace = full
    cli_child(argv, stderr)


def results(run_dir: Path) -> dict:
    """Every result file of a run except the records' timings: images, metadata and weights, by path."""
    out = {}
    for path in sorted(Path(run_dir).rglob("*")):
        if path.is_file() and path.name not in ("iteration.json", "run.json"):
            out[str(path.relative_to(run_dir))] = path.read_bytes()
    return out


def test_sigkill_at_random_moments_loses_only_the_unfinished_iteration(tiny_cache, tmp_path):
    """Kill ``chain run`` with SIGKILL at random moments, resume each time; the end result equals an uninterrupted run.

    Each kill lands at a random moment after the run has started working (run.json
    exists), within the time the three iterations take. Iterations that were complete
    before a kill are byte for byte unchanged afterwards (their records too, timings
    included: they were not redone), and at most one unfinished iteration folder remains.
    """
    code, err = chain_run(tmp_path / "clean")
    assert code == 0, err
    work = sum(json.loads((p / "iteration.json").read_text())["seconds"]
               for p in RunDirectory(tmp_path / "clean").path.glob("iter-*"))
    rng = np.random.default_rng(2)
    victim = tmp_path / "killed"
    kills = 0
    for _ in range(4):
        pid = chain_run(victim, wait=False)
        deadline = time.monotonic() + 120
        while not (victim / "run.json").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, work))
        before = {t: results_of(victim, t) for t in RunDirectory(victim).completed()}
        if stop(pid, signal.SIGKILL) == 0:  # it had finished before the kill
            break
        kills += 1
        for t, files in before.items():
            assert results_of(victim, t) == files
        json.loads((victim / "run.json").read_text())
        unfinished = [p for p in victim.glob("iter-*") if int(p.name[5:]) not in RunDirectory(victim).completed()]
        assert len(unfinished) <= 1
    assert kills >= 1
    code, err = chain_run(victim)  # resumes, or (if the last one finished) finds nothing left to do
    assert code == 0, err
    assert RunDirectory(victim).completed() == [0, 1, 2]
    assert results(victim) == results(tmp_path / "clean")


def results_of(run_dir: Path, t: int) -> dict:
    folder = RunDirectory(run_dir).iteration_dir(t)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_refuses_other_parameters_and_a_full_disk_is_one_line(tiny_cache, tmp_path):
    run_dir = tmp_path / "run"
    code, err = chain_run(run_dir, "--iterations", "1")
    assert code == 0, err
    kept = results(run_dir)
    code, err = chain_run(run_dir, "--iterations", "2", "--drop", "0.3")
    assert code == 2 and "Traceback" not in err
    assert "drop 0.0 there, 0.3 now" in err.strip().splitlines()[-1]
    assert results(run_dir) == kept

    code, err = chain_run(run_dir, "--iterations", "2", target=full_disk_child)
    assert code == 1 and "Traceback" not in err  # a failure of the system, not bad input
    assert "no space left on the device" in err.strip().splitlines()[-1]
    assert results(run_dir) == kept  # iteration 0 untouched, the failed iteration 1 cleared away
    assert RunDirectory(run_dir).completed() == [0]


def test_per_caption_and_real_fraction(tiny_cache, tmp_path):
    params = RunParameters(data="digits:20", iterations=2, per_caption=2, real_fraction=0.5, train_steps=3,
                           batch_size=8, steps=2, device="cpu")
    records = run_chain(tmp_path / "run", params)
    rows = RunDirectory(tmp_path / "run").read_metadata(1)
    assert len(rows) == 40 and len({r["seed"] for r in rows}) == 40
    assert [r["caption_index"] for r in rows[:4]] == [0, 0, 1, 1]
    assert records[1]["finetune"]["train_images"] == 40 and records[1]["finetune"]["real_images"] == 20
    assert records[0]["finetune"]["train_images"] == 20  # iteration 0 learns from the real data
