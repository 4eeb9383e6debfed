"""tools/pixel_selection_law.py: the selection law in pixel space with the final clip to the pixel range."""

import functools
import json

import numpy as np
import pandas as pd
import pytest
from conftest import load_tool
from PIL import Image

from qtm.sampler_map import ddim_config, prepare_sampler, step_coefficients
from qtm.solvers import SchedulerConfig

SCHEDULER = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}


@pytest.fixture(scope="module")
def tool():
    return load_tool("pixel_selection_law")


def test_the_full_covariance_sampler_is_the_exact_gaussian_law_for_one_gaussian_each(tool):
    """One Gaussian per branch (diagonal, so the exact per-axis law applies): the particles' moments are the exact
    law's within their Monte Carlo error (4 SE on each of 4 values: a false failure about once in 4000 runs)."""
    cond_mean, cond_var = np.array([0.5, -0.3]), np.array([0.2, 0.6])
    uncond_mean, uncond_var = np.array([0.0, 0.1]), np.array([1.0, 0.8])
    gaussian = lambda mean, var: [(1.0, mean, np.eye(2), var)]  # noqa: E731
    step = step_coefficients(10, eta=0.0, config=ddim_config("ddim", SchedulerConfig(**SCHEDULER)))
    particles = 20_000
    start = np.random.default_rng(5).standard_normal((particles, 2))
    x = tool.guided(gaussian(cond_mean, cond_var), gaussian(uncond_mean, uncond_var), 3.0, start, step)
    exact = prepare_sampler("ddim", cfg=3.0, steps=10, scheduler=SchedulerConfig(**SCHEDULER)).moments(
        cond_mean, cond_var, uncond_mean, uncond_var)
    # The same affine map of the same noise: the mean's error is the noise's sample mean through it.
    se_mean, se_var = np.sqrt(exact.var / particles), exact.var * np.sqrt(2 / particles)
    assert np.all(np.abs(x.mean(axis=0) - exact.mean) < 4 * se_mean)
    assert np.all(np.abs(x.var(axis=0, ddof=1) - exact.var) < 4 * se_var)


def write_folder(folder, pixels, captions):
    folder.mkdir(parents=True)
    lines = []
    for i, (image, caption) in enumerate(zip(pixels, captions, strict=True)):
        Image.fromarray(np.round(255 * image).astype(np.uint8)).save(folder / f"{i:06d}.png")
        lines.append(json.dumps({"file_name": f"{i:06d}.png", "caption": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def test_the_tool_scores_three_laws_on_a_run(tool, tmp_path, capsys):
    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    captions = ["dark"] * 12 + ["light"] * 12
    images = lambda: np.clip(np.array([0.3] * 12 + [0.7] * 12)[:, None, None] + 0.15 * rng.standard_normal(  # noqa: E731
        (24, 4, 4)), 0, 1)
    write_folder(run / "real", images(), captions)
    conditional = images()
    write_folder(run / "selection" / "base" / "cfg1", conditional, captions)
    write_folder(run / "selection" / "base" / "uncond", conditional, [""] * 24)
    (run / "selection" / "law.json").write_text(json.dumps({"steps": 5, "scheduler": SCHEDULER}))
    rows = [{"iteration": -1, "caption": c, "w": w, "axis": axis, "S_log_var": -0.2 * w - 0.1 * axis,
             "S_log_var_lo": -0.3 * w, "S_log_var_hi": -0.1 * w, "predicted_S_log_var": -0.5 * w + 0.05 * axis,
             "mixture_S_log_var": -0.25 * w - 0.08 * axis}
            for c in ("dark", "light") for w in (2.0, 5.0) for axis in range(3)]
    pd.DataFrame(rows).to_csv(tmp_path / "curve.csv", index=False)
    tool.main([str(tmp_path / "curve.csv"), str(run), "--particles", "60", "--out", str(tmp_path / "out.json")])
    out = json.loads((tmp_path / "out.json").read_text())
    laws = {row["law"] for row in out["scores"]}
    assert laws == {"Gaussian p_u (trait space)", "mixture p_u (trait space)", "pixel law"}
    means = pd.DataFrame(out["mean_S_log_var_per_w"]).set_index("w")
    assert np.isfinite(means["pixel_S_log_var"]).all()
    per_model = pd.DataFrame(out["mean_S_log_var_per_model_and_w"]).set_index(["iteration", "w"])
    np.testing.assert_allclose(per_model.loc[-1, "S_log_var"], means["S_log_var"])
    # Guidance narrows each caption: its pixel-space Gaussians are tilted away from the other caption's.
    assert means.loc[5.0, "pixel_S_log_var"] < 0
    assert "pixel law" in capsys.readouterr().out
    tool.main([str(tmp_path / "curve.csv"), str(run), "--particles", "60", "--kernel", "0",
               "--out", str(tmp_path / "kernel.json")])
    kernel = json.loads((tmp_path / "kernel.json").read_text())
    assert kernel["kernel"] == 0
    assert np.isfinite(pd.DataFrame(kernel["mean_S_log_var_per_w"])["pixel_S_log_var"]).all()
    # p_u from the model's unconditional images, here the captions' own images (12 each) without their captions:
    # the kernel mixture is then the captions' equal-weight mixture itself, the same law.
    for uncond in ("mixture", "samples"):
        tool.main([str(tmp_path / "curve.csv"), str(run), "--particles", "60", "--kernel", "0.1", "--uncond", uncond,
                   "--out", str(tmp_path / f"{uncond}.json")])
    laws = [json.loads((tmp_path / f"{uncond}.json").read_text()) for uncond in ("mixture", "samples")]
    assert laws[1]["uncond"] == "samples"
    same = [pd.DataFrame(law["mean_S_log_var_per_w"])["pixel_S_log_var"] for law in laws]
    np.testing.assert_allclose(same[0], same[1], rtol=1e-9)
    tool.main([str(tmp_path / "curve.csv"), str(run), "--particles", "60", "--uncond", "samples",
               "--out", str(tmp_path / "gaussian.json")])
    gaussian = json.loads((tmp_path / "gaussian.json").read_text())
    assert np.isfinite(pd.DataFrame(gaussian["mean_S_log_var_per_w"])["pixel_S_log_var"]).all()
    # A gain of 4 guides w = 2 as no gain guides w = 5, from the same starting noise.
    tool.main([str(tmp_path / "curve.csv"), str(run), "--particles", "60", "--kernel", "0.1", "--gain", "4",
               "--out", str(tmp_path / "gain.json")])
    gained = pd.DataFrame(json.loads((tmp_path / "gain.json").read_text())["mean_S_log_var_per_w"]).set_index("w")
    plain = pd.DataFrame(laws[0]["mean_S_log_var_per_w"]).set_index("w")
    assert gained.loc[2.0, "pixel_S_log_var"] == pytest.approx(plain.loc[5.0, "pixel_S_log_var"], rel=1e-9)


@pytest.mark.parametrize(("option", "message"), [
    (["--kernel", "-0.1"], "--kernel must be at least 0"),
    (["--gain", "0"], "--gain must be positive"),
    (["--network", "0.001", "--kernel", "0"], "--network takes a positive ridge and goes without --kernel"),
    (["--network", "0.001"], "has no run.json; give a run directory written by `chain run`"),
])
def test_a_negative_bandwidth_or_gain_is_refused(tool, tmp_path, capsys, option, message):
    with pytest.raises(SystemExit) as stop:
        tool.main([str(tmp_path / "curve.csv"), str(tmp_path), *option, "--out", str(tmp_path / "o.json")])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_a_kernel_of_one_point_is_the_isotropic_gaussian_at_it(tool):
    rng = np.random.default_rng(1)
    point, bandwidth, x = rng.standard_normal(3), 0.4, rng.standard_normal((5, 3))
    gaussian = [(1.0, point, np.eye(3), np.full(3, bandwidth**2))]
    for a, b in ((0.9, 0.44), (0.2, 0.98)):
        kernel = tool.kernel_eps(x, point[None, :], np.ones(1), bandwidth, a=a, b=b)
        np.testing.assert_allclose(kernel, tool.mixture_eps(x, gaussian, a, b), rtol=1e-12)


def test_the_kernel_law_of_bandwidth_zero_returns_its_images(tool):
    """A model that learned exactly its samples draws them again at CFG 1: every particle ends within 3 % of the
    points' spacing from one of them (1.7 % here: the last step's posterior is not quite sharp)."""
    rng = np.random.default_rng(2)
    points = rng.uniform(-1, 1, (6, 16))
    step = step_coefficients(25, eta=0.0, config=ddim_config("ddim", SchedulerConfig(**SCHEDULER)))
    branch = lambda: functools.partial(tool.kernel_eps, points=points, weights=np.ones(6), bandwidth=0.0)  # noqa: E731
    x = tool.guided(branch(), branch(), 1.0, rng.standard_normal((200, 16)), step)
    nearest = np.linalg.norm(x[:, None, :] - points[None], axis=2).min(axis=1)
    spacing = np.linalg.norm(points[:, None] - points[None], axis=2)[np.triu_indices(6, 1)].min()
    assert nearest.max() < 0.03 * spacing


def test_a_cfg1_run_s_models_are_read_from_its_own_images(tool, tmp_path):
    """A run at CFG 1 has no samples/cfg1 folders: its iterations' images are its models' CFG-1 samples."""
    for cfg in (1.0, 7.5):
        run = tmp_path / f"cfg{cfg}"
        run.mkdir()
        (run / "run.json").write_text(json.dumps({"parameters": {"cfg": cfg, "schedule": "constant"}}))
        expected = run / "iter-002" if cfg == 1.0 else run / "iter-002" / "samples" / "cfg1"
        assert tool.model_folder(run, 2, "cfg1") == expected
        assert tool.model_folder(run, 2, "uncond") == run / "iter-002" / "samples" / "uncond"
        assert tool.model_folder(run, -1, "cfg1") == run / "selection" / "base" / "cfg1"


class GaussianNetwork:
    """A stand-in network whose two branches are the exact noise predictions of one Gaussian each (affine in x)."""

    def __init__(self, cond, uncond, abar):
        self.branches, self.abar = {0: uncond, 1: cond}, abar  # {timestep: ᾱ}

    def condition(self, captions):
        import torch

        return (torch.tensor([0 if caption == "" else 1 for caption in captions]),)

    def __call__(self, x, t, condition, *, tool):
        import torch

        a, b = np.sqrt(self.abar[int(t[0])]), np.sqrt(1.0 - self.abar[int(t[0])])
        flat = x.reshape(len(x), -1).double().numpy()
        eps = np.empty_like(flat)
        for label, gaussian in self.branches.items():
            rows = condition[0].numpy() == label
            eps[rows] = tool.mixture_eps(flat[rows], gaussian, a, b)
        return torch.tensor(eps, dtype=torch.float32).reshape(x.shape)


def test_the_network_law_of_gaussian_branches_is_the_exact_gaussian_law(tool):
    """Branches that are Gaussians' denoisers are affine: fitted along the CFG-1 trajectories, the affine maps are
    theirs, and the guided law from them is the tool's exact law of those Gaussians (to the float32 outputs)."""
    from types import SimpleNamespace

    from chain.backends.tiny_loops import make_sampler

    rng = np.random.default_rng(3)
    gaussian = lambda mean, var: [(1.0, mean, np.eye(4), var)]  # noqa: E731
    cond, uncond = gaussian(rng.normal(0, 0.5, 4), rng.uniform(0.05, 0.3, 4)), gaussian(np.zeros(4), np.full(4, 0.5))
    step = step_coefficients(10, eta=0.0, config=ddim_config("ddim", SchedulerConfig(**SCHEDULER)))
    # qtm's ᾱ in double precision at the scheduler's timesteps (the scheduler's own are float32: 4e-4 off in b at
    # the last step, which the comparison would see).
    scheduler = make_sampler(1000)
    scheduler.set_timesteps(10)
    network = GaussianNetwork(cond, uncond, dict(zip(scheduler.timesteps.tolist(), step.abar_t, strict=True)))
    backend = SimpleNamespace(model=functools.partial(network, tool=tool), config=SimpleNamespace(
        num_train_timesteps=1000, prediction_type="epsilon", image_channels=1, resolution=2))
    backend.model.condition = network.condition
    start = rng.standard_normal((64, 4))
    maps = tool.network_maps(backend, "a digit", start, steps=10, ridge=1e-9)
    for w in (1.0, 4.0):
        np.testing.assert_allclose(tool.affine_guided(maps, w, start, step), tool.guided(cond, uncond, w, start, step),
                                   atol=1e-5)


def test_affine_fit_recovers_an_affine_map(tool):
    rng = np.random.default_rng(4)
    slope, intercept, x = rng.standard_normal((3, 2)), rng.standard_normal(2), rng.standard_normal((50, 3))
    fitted = tool.affine_fit(x, x @ slope + intercept, 1e-12)
    np.testing.assert_allclose(fitted[0], slope, atol=1e-9)
    np.testing.assert_allclose(fitted[1], intercept, atol=1e-9)
