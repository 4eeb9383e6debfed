"""The verification suite at tiny sizes: it runs, it writes its outputs, and it can fail.

False-failure rate: every check runs with a fixed seed and is designed to fail a
correct simulator with probability 0.001, so the smoke run of the eight ``qtm``
checks and the sampler-map check of ``chain`` fail by chance with probability at
most 0.009 over seeds; with the fixed seed the result is deterministic (the
particle engine does not depend on the thread count). The tests that inject a
wrong analytic value are expected to fail the check: their shifts are 10 or more
standard errors at these sizes, so a miss has probability far below 1e-6.
"""

import dataclasses
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from commands.qtm_program import app
from qtm import equilibria, gaussian, verify
from qtm.errors import QTMError

TINY = 0.02


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("verify")
    lines = []
    results = verify.run_checks(size=TINY, seed=0, out=out, echo=lines.append)
    return out, results, lines


def test_every_check_runs_passes_and_writes_its_plot(smoke):
    out, results, lines = smoke
    assert [r.name for r in results] == list(verify.CHECKS)
    assert len(lines) == len(results)
    for result in results:
        assert result.status == "pass", verify.format_result(result)
        assert (out / f"{result.name}.png").stat().st_size > 1000
        assert "designed false-failure rate 0.001" in verify.format_result(result)
    summary = json.loads((out / "verify.json").read_text())
    assert [c["name"] for c in summary["checks"]] == list(verify.CHECKS)
    assert summary["provenance"]["seed"] == 0


@pytest.mark.parametrize("name", list(verify.CHECKS))
def test_a_wrong_analytic_value_fails_each_check(smoke, name):
    """Analytic values 10% off (and at least 10 standard errors) are caught by every check."""
    result = next(r for r in smoke[1] if r.name == name)
    assert_a_wrong_value_fails(result.comparison)


def assert_a_wrong_value_fails(c):
    shift = np.maximum(0.1 * np.abs(c.expected), 10 * c.standard_error)
    verdict = verify.evaluate(dataclasses.replace(c, expected=c.expected + shift))
    assert not verdict.passed
    assert verdict.adjusted_pvalue < verdict.false_failure_rate


def test_a_wrong_truncation_formula_is_detected(monkeypatch):
    """A variance factor 2% too large in qtm.gaussian (about 8 standard errors at full size) fails the check."""
    right = gaussian.truncation_selection

    def wrong(mean, var, *, keep):
        result = right(mean, var, keep=keep)
        return result._replace(var=result.var * 1.02)

    assert verify.run_checks(["truncation"], seed=0)[0].status == "pass"
    monkeypatch.setattr(gaussian, "truncation_selection", wrong)
    assert verify.run_checks(["truncation"], seed=0)[0].status == "fail"


def test_the_approximate_equilibrium_is_told_from_the_exact_one(monkeypatch):
    """The suite separates Lande's exact Gaussian equilibrium from the approximation sqrt(v_m omega^2)."""
    monkeypatch.setattr(
        equilibria, "stabilizing_mutation_equilibrium", lambda *, width2, mutation_var: np.sqrt(mutation_var * width2)
    )
    result = verify.run_checks(["mutation_selection"], size=TINY, seed=0)[0]
    assert result.status == "fail"
    assert result.verdict.max_abs_z > 10


def test_evaluate_uses_bonferroni_and_student_t():
    c = verify.Comparison(("a", "b"), np.array([3.0, 0.0]), np.array([1.0, 1.0]), np.array([0.0, 0.0]))
    normal = verify.evaluate(c, false_failure_rate=0.01)
    assert normal.min_pvalue == pytest.approx(0.0026998, rel=1e-4)
    assert normal.adjusted_pvalue == pytest.approx(2 * 0.0026998, rel=1e-4)
    assert normal.passed is False
    few = verify.evaluate(dataclasses.replace(c, dof=4), false_failure_rate=0.01)
    assert few.min_pvalue == pytest.approx(0.03994, rel=1e-3)  # Student t with 4 degrees of freedom
    assert few.passed is True
    only_p = verify.Comparison((), np.array([]), np.array([]), np.array([]), pvalues={"KS": 0.5})
    assert math.isnan(verify.evaluate(only_p).max_abs_z)


def test_evaluate_refuses_a_comparison_without_finite_statistics():
    c = verify.Comparison(("a",), np.array([1.0]), np.array([0.0]), np.array([1.0]))
    with pytest.raises(QTMError, match="standard errors"):
        verify.evaluate(c)
    with pytest.raises(QTMError, match="false_failure_rate"):
        verify.evaluate(c, false_failure_rate=0.0)


def test_unavailable_checks_are_skipped_with_the_reason(monkeypatch):
    check = dataclasses.replace(verify.CHECKS["truncation"], unavailable=lambda: "needs something absent")
    monkeypatch.setitem(verify.CHECKS, "truncation", check)
    (result,) = verify.run_checks(["truncation"], size=TINY, out=None)
    assert (result.status, result.note) == ("skipped", "needs something absent")
    assert "SKIPPED" in verify.format_result(result)


def test_cli_runs_a_check_and_exits_1_when_one_fails(tmp_path, monkeypatch):
    runner = CliRunner()
    done = runner.invoke(app, ["verify", "--check", "truncation", "--size", "0.05", "--out", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert "truncation" in done.output and "PASS" in done.output and "1 passed, 0 failed" in done.output
    assert (tmp_path / "truncation.png").exists() and (tmp_path / "verify.json").exists()

    def broken(*, size, rng):
        return verify.Comparison(("x",), np.array([1.0]), np.array([0.01]), np.array([0.0]))

    monkeypatch.setitem(verify.CHECKS, "truncation", verify.Check("truncation", "broken on purpose", broken))
    done = runner.invoke(app, ["verify", "--check", "truncation", "--out", str(tmp_path)])
    assert done.exit_code == 1
    assert "FAIL" in done.output and "1 failed" in done.output


def test_a_check_that_cannot_run_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    def cannot(*, size, rng):
        raise QTMError("the helper process died")

    monkeypatch.setitem(verify.CHECKS, "drift", verify.Check("drift", "cannot run", cannot))
    done = CliRunner().invoke(app, ["verify", "--check", "drift", "--check", "truncation", "--size", "0.05",
                                    "--out", str(tmp_path)])  # fmt: skip
    assert done.exit_code == 1
    assert "ERROR    the helper process died" in done.output
    assert "1 passed, 0 failed, 1 could not run" in done.output
    statuses = {c["name"]: c["status"] for c in json.loads((tmp_path / "verify.json").read_text())["checks"]}
    assert statuses == {"truncation": "pass", "drift": "error"}


def test_cli_lists_the_checks():
    done = CliRunner().invoke(app, ["verify", "--list"])
    assert done.exit_code == 0
    assert all(name in done.output for name in verify.CHECKS)
    assert "sampler_map_diffusers" not in done.output


def test_the_suite_stays_on_the_ground_floor():
    """Importing and listing the qtm suite loads neither torch, diffusers, chain nor validate."""
    import subprocess
    import sys

    code = ("import sys, qtm.verify; print(sorted({m.split('.')[0] for m in sys.modules} "
            "& {'torch', 'diffusers', 'chain', 'validate'}))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_sampler_map_against_diffusers(tmp_path):
    """The check moved to chain runs through the qtm runner: it passes (false-failure rate 0.001), writes its
    outputs and fails a wrong analytic value."""
    pytest.importorskip("diffusers")
    from chain import verify_sampler

    lines = []
    (result,) = verify_sampler.run_check(size=TINY, seed=0, out=tmp_path, echo=lines.append)
    assert result.name == "sampler_map_diffusers" and result.status == "pass", verify.format_result(result)
    assert lines == [verify.format_result(result)] and "designed false-failure rate 0.001" in lines[0]
    assert (tmp_path / "sampler_map_diffusers.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "verify.json").read_text())
    assert [c["name"] for c in summary["checks"]] == ["sampler_map_diffusers"]
    assert len(result.comparison.pvalues) == len(verify_sampler.CASES)
    assert_a_wrong_value_fails(result.comparison)


def test_every_solver_against_diffusers_through_the_runner(tmp_path):
    """chain verify-sampler's every-solver check (1e6 particles per case at size 1, the issue's record
    size) passes at a small size (false-failure rate 0.001) and fails a wrong analytic value."""
    pytest.importorskip("diffusers")
    from chain import verify_sampler

    (result,) = verify_sampler.run_check(names=["solver_maps_diffusers"], size=TINY, seed=0, out=tmp_path)
    assert result.status == "pass", verify.format_result(result)
    assert len(result.comparison.labels) == 2 * len(verify_sampler.SOLVER_RUNS) * len(verify_sampler.SOLVER_CASES)
    assert_a_wrong_value_fails(result.comparison)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--check", "nope"], "unknown check 'nope'"),
        (["--size", "0"], "size must be > 0"),
        (["--false-failure-rate", "2"], "false_failure_rate must lie in (0, 1]"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    import subprocess
    import sys

    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", "from commands.qtm_program import main; main()", "verify", "--out", str(out), *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qtm: error: ") and message in lines[0]
    assert not out.exists()
