"""The benchmark scripts run end to end on a tiny budget and write the figures the README quotes."""

import importlib
import json
import pathlib

BENCH = pathlib.Path(__file__).parent.parent / "experiments" / "bench"


def test_train_speed_writes_every_variant_and_ratio(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    out = tmp_path / "speed.json"
    importlib.import_module("train_speed").main(["--seconds", "0.01", "--steps-per-call", "2", "--dims", "2", "16",
                                                 "--wide-width", "32", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["steps_per_s"]) == {"bare", "bare_drawn", "icfm", "icfm_driver", "otcfm_network_simplex",
                                          "otcfm_hungarian", "assignment_network_simplex"}
    assert all(rate > 0 for rate in result["steps_per_s"].values())
    ratios = result["ratios"]
    # Each ratio is the quotient of two measured rates, and OT-CFM's bound is 1 + (its share of the assignment).
    assert ratios["icfm_over_bare_time"] == result["steps_per_s"]["bare"] / result["steps_per_s"]["icfm"]
    assert ratios["otcfm_bound_from_assignment_over_icfm_time"] > 1.0
    models = result["models"]
    assert [(m["dim"], m["width"], m["precision"]) for m in models] == [
        (2, 64, "float32"), (2, 64, "bfloat16"), (16, 32, "float32"), (16, 32, "bfloat16")]
    assert all(m["icfm_over_bare_time"] == m["steps_per_s"]["bare"] / m["steps_per_s"]["icfm"] for m in models)


def test_couplings_bench_finds_the_optimum_and_writes_the_table(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    out = tmp_path / "couplings.json"
    importlib.import_module("couplings").main(["--sizes", "16", "--dims", "2", "--out", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    # ExactOT reaches SciPy's optimum; an entropic plan cannot beat it.
    assert abs(row["exact_gap"]) < 1e-5 and row["sinkhorn_gap"] > -1e-6
    # POT's Sinkhorn at the same ε solves the same entropic problem: its plan costs the same.
    assert row["pot_sinkhorn_s"] > 0 and abs(row["pot_sinkhorn_gap"] - row["sinkhorn_gap"]) < 0.01
    assert "| 16 | 2 |" in (tmp_path / "couplings.md").read_text()


def test_engine_bench_compares_with_the_bare_step_per_device_count(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    out = tmp_path / "engine.json"
    importlib.import_module("engine").main(["--devices", "1", "2", "--seconds", "0.05", "--steps-per-call", "2",
                                            "--batch", "64", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [row["devices"] for row in rows] == [1, 2]
    for row in rows:
        assert row["engine_over_bare_time"] == row["bare_steps_per_s"] / row["engine_steps_per_s"]
        assert row["examples_per_s"] == 64 * row["engine_steps_per_s"]


def test_likelihood_bench_times_every_divergence_per_dimension(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    out = tmp_path / "likelihood.json"
    importlib.import_module("likelihood").main(["--dims", "2", "5", "--batch", "8", "--width", "16", "--steps", "2",
                                                "--chunk", "2", "--seconds", "0.01", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [row["dim"] for row in rows] == [2, 5]
    for row in rows:
        assert set(row["points_per_s"]) == {"encode", "exact", "hutchinson_1", "hutchinson_4"}
        assert all(rate > 0 for rate in row["points_per_s"].values()) and row["nfe"] == 4


def test_torchcfm_comparison_trains_and_samples_the_fm_jax_side(monkeypatch):
    # The torch side needs the `bench` extra; the run that produced results/vs_torchcfm.json used it.
    monkeypatch.syspath_prepend(str(BENCH))
    bench = importlib.import_module("vs_torchcfm")
    out = bench.run_fm_jax("otcfm", "8gaussians", "moons", steps=20, num=64, seed=0)
    assert out["steps_per_s"] > 0 and out["samples"].shape == (64, 2)
    assert bench.SIGMA == {"icfm": 0.1, "otcfm": 0.1, "sbcfm": 1.0}
    rows = [{"task": "a", "method": "icfm", "seed": seed, "torchcfm_steps_per_s": 100.0, "fm_jax_steps_per_s": rate,
             "speedup": rate / 100.0, "torchcfm_w2": 0.5, "fm_jax_w2": 0.4} for seed, rate in enumerate([300.0, 500.0])]
    (summary,) = bench.summarize(rows)
    assert summary["seeds"] == 2 and summary["speedup"] == {"mean": 4.0, "std": 1.0}


def test_unet_bench_times_the_loss_beside_the_bare_step_in_both_precisions(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    out = tmp_path / "unet.json"
    importlib.import_module("unet_step").main(["--preset", "tiny", "--shape", "8,8,1", "--batch", "4", "--calls", "1",
                                               "--precisions", "float32", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["params"] == 190_369  # the tiny preset, unconditional, on 8x8x1
    for row in result["precisions"].values():
        assert row["loss_step_s"] > 0 and row["bare_step_s"] > 0 and row["loss_gflop"] > 0
        assert row["loss_over_bare_time"] == row["loss_step_s"] / row["bare_step_s"]


def test_sampling_bench_matches_the_scan_loop_and_counts_nfe_per_tolerance(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    out = tmp_path / "sampling.json"
    importlib.import_module("sampling").main(["--steps", "3", "--seconds", "0.01", "--train-steps", "100",
                                              "--out", str(out)])
    result = json.loads(out.read_text())
    # Diffrax's Euler and the hand-written loop compute the same steps (up to the rounding of t).
    assert all(r["max_abs_difference"] < 1e-5 for r in result["euler"]) and len(result["euler"]) == 2
    dopri5 = [r["nfe"] for r in result["tolerance"] if r["solver"] == "dopri5"]
    assert dopri5 == sorted(dopri5) and dopri5[0] < dopri5[-1]  # tighter tolerances cost more NFE
    assert "| mlp_784 | 1,000 | 3 |" in out.with_suffix(".md").read_text()


def test_teacher_cost_bench_times_both_teachers_in_step_and_precomputed(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    out = tmp_path / "teacher_cost.json"
    importlib.import_module("teacher_cost").main(["--steps", "20", "--batch", "32", "--pairs", "100",
                                                  "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert list(rows) == ["reflow (Dopri5 1e-4)", "nfm (RealNVP)"]
    for r in rows.values():
        assert min(r["in_step_steps_per_s"], r["precomputed_steps_per_s"], r["pairs_seconds"]) > 0
        saved = 1 / r["in_step_steps_per_s"] - 1 / r["precomputed_steps_per_s"]
        assert r["break_even_steps"] == (r["pairs_seconds"] / saved if saved > 0 else None)
    assert "| nfm (RealNVP) |" in out.with_suffix(".md").read_text()


def test_teacher_cost_bench_reports_never_when_precomputing_does_not_pay(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    bench = importlib.import_module("teacher_cost")
    # Precomputed steps no faster than in-step ones: no number of steps pays for the pairs.
    monkeypatch.setattr(bench, "steps_per_s", lambda config, workdir: 100.0)
    monkeypatch.setattr(bench, "pairs_seconds", lambda config, num: 1.0)
    out = tmp_path / "teacher_cost.json"
    bench.main(["--steps", "20", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert all(r["break_even_steps"] is None for r in rows.values())
    assert "| 1.00 | never |" in out.with_suffix(".md").read_text()
