"""The benchmark scripts run end to end on a tiny budget and write the figures the README quotes.

Timings on a tiny budget are noise, so the figures derived from them (ratios, examples/s,
break-even steps) are checked on runs whose measurements are replaced by known ones, against
values worked out by hand; the shared timing loops are checked against calls of known length.
"""

import importlib
import importlib.util
import json
import pathlib
import re
import time

import pytest

ROOT = pathlib.Path(__file__).parent.parent
BENCH = ROOT / "experiments" / "bench"


def bench(name, monkeypatch):
    """A script of experiments/bench, imported as the tests and its own worker processes do."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module(name)


def said(err: str, line: str, desc: str, total: int) -> bool:
    """Whether stderr holds the script's start line and its bar `desc` drawn at total/total."""
    return line in err and re.search(re.escape(desc) + rf"[^\r\n]*\b{total}/{total}\b", err) is not None


def test_progress_helpers_say_what_runs_and_count_it_done(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT))
    common = importlib.import_module("experiments.common")
    common.announce("three things to do")
    seen = []
    for item in common.each(["a", "b", "c"], "things", "thing"):
        seen.append(item)
        common.row(f"did {item}")
    captured = capsys.readouterr()
    assert seen == ["a", "b", "c"] and "three things to do" in captured.err
    assert re.search(r"things: 100%[^\r\n]*3/3", captured.err)
    assert captured.out == "did a\ndid b\ndid c\n"  # results on stdout, the bar and the line on stderr


def test_timing_loops_measure_calls_of_known_length(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    common = importlib.import_module("experiments.common")
    nap = 0.01  # each call sleeps this long, so no count of calls can run faster than 1 / nap per second
    rate = common.calls_per_second(lambda carry: time.sleep(nap), None, 0.1)
    assert 0.5 / nap < rate <= 1 / nap
    median = common.median_seconds(lambda: time.sleep(nap), 0.1, min_repeats=2)
    assert nap <= median < 2 * nap
    calls = []
    common.median_seconds(lambda: calls.append(1), 60.0, max_repeats=3)
    assert len(calls) == 3  # the cap ends it long before the budget
    calls.clear()
    common.calls_per_second(lambda carry: calls.append(1), None, 0.0, min_calls=5)
    assert len(calls) == 1 + 5  # one untimed warm-up call, then at least min_calls timed ones


def test_train_speed_writes_every_variant_and_ratio(tmp_path, monkeypatch):
    out = tmp_path / "speed.json"
    bench("train_speed", monkeypatch).main(
        ["--seconds", "0.01", "--steps-per-call", "2", "--dims", "2", "16", "--wide-width", "32", "--out", str(out)]
    )
    result = json.loads(out.read_text())
    assert set(result["steps_per_s"]) == {
        "bare",
        "bare_drawn",
        "icfm",
        "icfm_driver",
        "otcfm_network_simplex",
        "otcfm_hungarian",
        "assignment_network_simplex",
    }
    assert all(rate > 0 for rate in result["steps_per_s"].values())
    assert all(ratio > 0 for ratio in result["ratios"].values())
    models = result["models"]
    assert [(m["dim"], m["width"], m["precision"]) for m in models] == [
        (2, 64, "float32"),
        (2, 64, "bfloat16"),
        (16, 32, "float32"),
        (16, 32, "bfloat16"),
    ]


def test_train_speed_ratios_are_step_time_ratios(tmp_path, monkeypatch):
    module = bench("train_speed", monkeypatch)
    # Steps/s as if measured, in the order main measures them: its six variants, then bare and
    # icfm for each model; the assignment in calls/s.
    measured = iter([1000.0, 500.0, 125.0, 100.0, 40.0, 10.0, 300.0, 100.0, 200.0, 50.0])
    monkeypatch.setattr(module, "steps_per_second", lambda step_fn, params, steps_per_call, seconds: next(measured))
    monkeypatch.setattr(module, "assignments_per_second", lambda x0, x1, calls, seconds: 25.0)
    out = tmp_path / "speed.json"
    module.main(["--dims", "2", "--precisions", "float32", "bfloat16", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["steps_per_s"] == {
        "bare": 1000.0,
        "bare_drawn": 500.0,
        "icfm": 125.0,
        "icfm_driver": 100.0,
        "otcfm_network_simplex": 40.0,
        "otcfm_hungarian": 10.0,
        "assignment_network_simplex": 25.0,
    }
    # An I-CFM step takes 1/125 s, a bare one 1/1000 s: 8 times as long; and so on. The bound:
    # an I-CFM step (1/100 s) plus an assignment (1/25 s), over the I-CFM step.
    assert result["ratios"] == pytest.approx(
        {
            "icfm_over_bare_time": 8.0,
            "icfm_over_bare_drawn_time": 4.0,
            "bare_drawn_over_bare_time": 2.0,
            "otcfm_network_simplex_over_icfm_time": 2.5,
            "otcfm_bound_from_assignment_over_icfm_time": 5.0,
            "otcfm_hungarian_over_icfm_time": 10.0,
        }
    )
    assert [m["icfm_over_bare_time"] for m in result["models"]] == pytest.approx([3.0, 4.0])


def test_couplings_bench_finds_the_optimum_and_writes_the_table(tmp_path, monkeypatch, capsys):
    out = tmp_path / "couplings.json"
    bench("couplings", monkeypatch).main(["--sizes", "16", "--dims", "2", "--out", str(out)])
    assert said(capsys.readouterr().err, "couplings bench: every coupling timed on 1 size(s)", "couplings bench", 1)
    (row,) = json.loads(out.read_text())["rows"]
    # Both exact solvers reach SciPy's optimum; an entropic plan cannot beat it.
    assert abs(row["exact_gap"]) < 1e-5 and abs(row["auction_gap"]) < 1e-6 and row["sinkhorn_gap"] > -1e-6
    # The Hungarian replica that counts optax's loop trips reaches the optimum too; the auction
    # takes fewer dependent steps even at n = 16.
    assert abs(row["hungarian_replica_gap"]) < 1e-9 and 0 < row["auction_depth"] < row["hungarian_depth"]
    # POT's Sinkhorn at the same ε solves the same entropic problem: its plan costs the same.
    assert row["pot_sinkhorn_s"] > 0 and abs(row["pot_sinkhorn_gap"] - row["sinkhorn_gap"]) < 0.01
    assert "| 16 | 2 |" in (tmp_path / "couplings.md").read_text()


def test_engine_bench_compares_with_the_bare_step_per_device_count(tmp_path, monkeypatch):
    out = tmp_path / "engine.json"
    bench("engine", monkeypatch).main(
        ["--devices", "1", "2", "--seconds", "0.05", "--steps-per-call", "2", "--batch", "64", "--out", str(out)]
    )
    rows = json.loads(out.read_text())["rows"]
    assert [row["devices"] for row in rows] == [1, 2]
    for row in rows:
        assert min(row["bare_steps_per_s"], row["engine_steps_per_s"], row["engine_over_bare_time"]) > 0


def test_engine_bench_ratio_and_throughput_follow_from_the_step_rates(monkeypatch):
    module = bench("engine", monkeypatch)
    # Calls/s as if measured, the bare step's first; 2 steps per call.
    measured = iter([50.0, 20.0])
    monkeypatch.setattr(module.common, "calls_per_second", lambda call, carry, seconds: next(measured))
    row = module.measure(1, "icfm", batch=64, steps_per_call=2, seconds=0.01)
    assert (row["bare_steps_per_s"], row["engine_steps_per_s"]) == (100.0, 40.0)
    assert row["engine_over_bare_time"] == pytest.approx(2.5)  # an engine step (1/40 s) is 2.5 bare ones (1/100 s)
    assert row["examples_per_s"] == pytest.approx(2560.0)  # 40 steps/s of 64 examples
    assert min(row["first_call_s"].values()) > 0


def test_likelihood_bench_times_every_divergence_per_dimension(tmp_path, monkeypatch):
    out = tmp_path / "likelihood.json"
    bench("likelihood", monkeypatch).main(
        [
            "--dims",
            "2",
            "5",
            "--batch",
            "8",
            "--width",
            "16",
            "--steps",
            "2",
            "--chunk",
            "2",
            "--seconds",
            "0.01",
            "--out",
            str(out),
        ]
    )
    rows = json.loads(out.read_text())["rows"]
    assert [row["dim"] for row in rows] == [2, 5]
    for row in rows:
        assert set(row["points_per_s"]) == {"encode", "exact", "hutchinson_1", "hutchinson_4"}
        assert all(rate > 0 for rate in row["points_per_s"].values()) and row["nfe"] == 4


def test_torchcfm_comparison_trains_and_samples_the_fm_jax_side(monkeypatch):
    # The torch side needs the `bench` extra; the run that produced results/vs_torchcfm.json used it.
    module = bench("vs_torchcfm", monkeypatch)
    out = module.run_fm_jax("otcfm", "8gaussians", "moons", steps=20, num=64, seed=0)
    assert out["steps_per_s"] > 0 and out["samples"].shape == (64, 2)
    rows = [
        {
            "task": "a",
            "method": "icfm",
            "seed": seed,
            "torchcfm_steps_per_s": 100.0,
            "fm_jax_steps_per_s": rate,
            "speedup": rate / 100.0,
            "torchcfm_w2": 0.5,
            "fm_jax_w2": 0.4,
        }
        for seed, rate in enumerate([300.0, 500.0])
    ]
    (summary,) = module.summarize(rows)
    assert summary["seeds"] == 2 and summary["speedup"] == {"mean": 4.0, "std": 1.0}
    args = module.argparse.Namespace(steps=20, seeds=2, num=64)
    assert "| a | icfm | 100 ± 0 | 400 ± 100 | 4.0× ± 1.0 | 0.500 ± 0.000 | 0.400 ± 0.000 |" in module.markdown(
        [summary], args
    )


def test_torchcfm_comparison_trains_both_sides_at_the_papers_settings(monkeypatch):
    module = bench("vs_torchcfm", monkeypatch)
    trained = {}

    class Stop(Exception):
        pass

    def train(config, workdir, progress):  # the config fm_jax would train, then no training
        trained[config.method] = config
        raise Stop

    monkeypatch.setattr(module.common, "train", train)
    torchcfm = importlib.util.find_spec("torchcfm") is not None
    # The OT-CFM paper's 2D settings, which both sides share: sigma 0.1, and 1.0 for SB-CFM.
    for method, sigma in {"icfm": 0.1, "otcfm": 0.1, "sbcfm": 1.0}.items():
        with pytest.raises(Stop):
            module.run_fm_jax(method, "normal", "moons", steps=20, num=8, seed=3)
        config = trained[method]
        assert (config.sigma, config.batch_size, config.learning_rate, config.seed) == (sigma, 256, 1e-3, 3)
        if torchcfm:
            assert module.torch_matcher(method).sigma == sigma


def test_unet_bench_figures_follow_from_the_step_times(tmp_path, monkeypatch):
    module = bench("unet_step", monkeypatch)
    # Median seconds per call as if measured: the loss step 2.5 times the bare one.
    monkeypatch.setattr(module, "median_call_seconds", lambda steps, carries, calls: {"bare": 0.02, "loss": 0.05})
    out = tmp_path / "unet.json"
    module.main(
        [
            "--preset",
            "tiny",
            "--shape",
            "8,8,1",
            "--batch",
            "4",
            "--calls",
            "1",
            "--precisions",
            "float32",
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert result["params"] == 190_369  # the tiny preset, unconditional, on 8x8x1
    row = result["precisions"]["float32"]
    assert row["loss_gflop"] > 0 and row["bare_gflop"] > 0
    assert (row["bare_step_s"], row["loss_step_s"]) == (0.02, 0.05)
    assert row["loss_over_bare_time"] == pytest.approx(2.5)
    assert (row["bare_images_per_s"], row["loss_images_per_s"]) == pytest.approx((200.0, 80.0))  # 4 images a step


def test_discrete_bench_compares_the_loss_step_with_the_bare_one_and_times_the_samplers(tmp_path, monkeypatch):
    module = bench("discrete_step", monkeypatch)
    monkeypatch.setattr(
        module.unet_step, "median_call_seconds", lambda steps, carries, calls: {"bare": 0.04, "loss": 0.05}
    )
    out = tmp_path / "discrete.json"
    result = module.main(
        [
            "--preset",
            "tiny",
            "--length",
            "6",
            "--levels",
            "3",
            "--batch",
            "4",
            "--calls",
            "1",
            "--steps",
            "2",
            "5",
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text())["train_step"] == result["train_step"]
    row = result["train_step"]
    assert row["loss_over_bare_time"] == pytest.approx(1.25) and row["loss_sequences_per_s"] == pytest.approx(80.0)
    assert [(s["sampler"], s["nfe"]) for s in result["sampling"]] == [("euler", 2), ("euler", 5), ("unmask", 6)]
    assert all(s["sequences_per_s"] > 0 for s in result["sampling"])


def test_unet_bench_times_each_step_by_its_median_call(monkeypatch):
    module = bench("unet_step", monkeypatch)

    def step(seconds):
        return lambda params, opt_state, i: (time.sleep(seconds) or params, opt_state)

    medians = module.median_call_seconds(
        {"short": step(0.01), "long": step(0.05)}, {"short": (0, 0), "long": (0, 0)}, calls=3
    )
    assert 0.01 <= medians["short"] < 0.04 and 0.05 <= medians["long"] < 0.08


def test_sampling_bench_matches_the_scan_loop_and_counts_nfe_per_tolerance(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sampling.json"
    module = bench("sampling", monkeypatch)
    module.main(["--steps", "3", "--seconds", "0.01", "--train-steps", "100", "--out", str(out)])
    err = capsys.readouterr().err
    assert said(err, "sampling bench: Diffrax's Euler against a lax.scan loop", "Diffrax Euler against a scan", 2)
    assert said(err, "", "NFE per tolerance", len(module.ADAPTIVE) * len(module.TOLERANCES))
    result = json.loads(out.read_text())
    # Diffrax's Euler and the hand-written loop compute the same steps (up to the rounding of t).
    assert all(r["max_abs_difference"] < 1e-5 for r in result["euler"]) and len(result["euler"]) == 2
    dopri5 = [r["nfe"] for r in result["tolerance"] if r["solver"] == "dopri5"]
    assert dopri5 == sorted(dopri5) and dopri5[0] < dopri5[-1]  # tighter tolerances cost more NFE
    assert "| mlp_784 | 1,000 | 3 |" in out.with_suffix(".md").read_text()


def test_teacher_cost_bench_times_both_teachers_in_step_and_precomputed(tmp_path, monkeypatch, capsys):
    out = tmp_path / "teacher_cost.json"
    bench("teacher_cost", monkeypatch).main(["--steps", "20", "--batch", "32", "--pairs", "100", "--out", str(out)])
    assert said(capsys.readouterr().err, "teacher cost bench: two teachers", "teacher cost bench", 8)
    rows = json.loads(out.read_text())["rows"]
    assert list(rows) == ["reflow (Dopri5 1e-4)", "nfm (RealNVP)"]
    for r in rows.values():
        assert (
            min(r["icfm_steps_per_s"], r["in_step_steps_per_s"], r["precomputed_steps_per_s"], r["pairs_seconds"]) > 0
        )
        assert r["break_even_steps"] is None or r["break_even_steps"] > 0
    assert "| nfm (RealNVP) |" in out.with_suffix(".md").read_text()


def test_teacher_cost_bench_breaks_even_where_both_ways_took_as_long(tmp_path, monkeypatch):
    module = bench("teacher_cost", monkeypatch)
    # Steps/s as if measured, by run; the pairs take 2 s.
    rates = {
        "icfm": 500.0,
        "flow": 400.0,
        "reflow_in_step": 100.0,
        "reflow_precomputed": 200.0,
        "nfm_in_step": 50.0,
        "nfm_precomputed": 250.0,
    }
    monkeypatch.setattr(module, "steps_per_s", lambda config, workdir: rates[pathlib.Path(workdir).name])
    monkeypatch.setattr(module, "pairs_seconds", lambda config, num: 2.0)
    out = tmp_path / "teacher_cost.json"
    module.main(["--steps", "20", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["icfm_steps_per_s"] for r in rows.values()] == [500.0, 500.0]
    # Reflow: 400 steps take 4 s in step, and 2 s + 2 s precomputed; NFM: 125 steps, 2.5 s either way.
    assert [r["break_even_steps"] for r in rows.values()] == pytest.approx([400.0, 125.0])
    for r in rows.values():
        n = r["break_even_steps"]
        assert n / r["in_step_steps_per_s"] == pytest.approx(r["pairs_seconds"] + n / r["precomputed_steps_per_s"])
    assert "| 2.00 | 400 |" in out.with_suffix(".md").read_text()


def test_teacher_cost_bench_reports_never_when_precomputing_does_not_pay(tmp_path, monkeypatch):
    module = bench("teacher_cost", monkeypatch)
    # Precomputed steps no faster than in-step ones: no number of steps pays for the pairs.
    monkeypatch.setattr(module, "steps_per_s", lambda config, workdir: 100.0)
    monkeypatch.setattr(module, "pairs_seconds", lambda config, num: 1.0)
    out = tmp_path / "teacher_cost.json"
    module.main(["--steps", "20", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert all(r["break_even_steps"] is None for r in rows.values())
    assert "| 1.00 | never |" in out.with_suffix(".md").read_text()


def test_startup_bench_times_fresh_processes_and_names_what_they_import(tmp_path, monkeypatch):
    startup = bench("startup", monkeypatch)
    monkeypatch.setattr(startup, "CASES", {"import fm_jax": startup.CASES["import fm_jax"], "numpy": "import numpy"})
    result = startup.main(["--repeats", "1", "--out", str(tmp_path / "startup.json")])
    cases = json.loads((tmp_path / "startup.json").read_text())["cases"]
    assert cases == result["cases"] and set(cases) == {"import fm_jax", "numpy"}
    assert cases["import fm_jax"]["imports"] == [] and 0 < cases["import fm_jax"]["seconds"] < 60
    assert "| `import fm_jax` |" in (tmp_path / "startup.md").read_text()


def test_hungarian_loop_trips_follow_optax(monkeypatch):
    import jax.numpy as jnp
    import numpy as np
    import optax

    count = bench("couplings", monkeypatch).hungarian_loop_trips
    # One row: the row loop, one search step with its inner loop over one column, one augmentation.
    assert count(np.zeros((1, 1)))[0] == 4
    # Two rows on the identity's cost: each search adds its own free column at once.
    assert count(np.array([[0.0, 1.0], [1.0, 0.0]]))[0] == (1 + 3 + 1) + (1 + 3 + 1)
    cost = np.random.default_rng(0).random((32, 32))
    rows, cols = optax.assignment.hungarian_algorithm(jnp.asarray(cost, jnp.float32))
    np.testing.assert_array_equal(count(cost)[1][np.asarray(cols)], np.asarray(rows))


def test_gpu_check_runs_end_to_end_at_tiny_sizes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "gpu_check.json"
    bench("gpu_check", monkeypatch).main(["--tiny", "--calls", "2", "--out", str(out)])
    assert "GPU check on" in capsys.readouterr().err
    result = json.loads(out.read_text())
    for precision in ("float32", "bfloat16"):
        row = result["unet"]["precisions"][precision]
        assert row["images_per_s"] > 0 and row["icfm_gflop"] > 0 and row["mfu_vs_bf16_peak"] is None  # a CPU
    (row,) = result["couplings"]
    assert all(row[f"{name}_ms"] > 0 for name in ("auction", "network_simplex", "sinkhorn", "hungarian"))
    assert row["auction_depth"] > 0 and abs(row["auction_gap_to_pot"]) < 1e-6
    assert result["otcfm_vs_icfm"]["otcfm_auction_over_icfm_time"] > 0
    assert result["otcfm_vs_icfm"]["otcfm_network_simplex_over_icfm_time"] > 0
    assert result["inception"]["batch"] == 2 and result["inception"]["images_per_s"] > 0


def test_inception_bench_counts_images_per_second_of_the_299_network(tmp_path, monkeypatch):
    module = bench("inception", monkeypatch)
    monkeypatch.setattr(module.common, "median_seconds", lambda fn, *args, **kwargs: (fn(), 0.5)[1])  # a known time
    out = tmp_path / "inception.json"
    row = module.main(["--batch", "2", "--shape", "8,8,3", "--calls", "1", "--out", str(out)])
    assert json.loads(out.read_text())["images_per_s"] == row["images_per_s"] == 2 / 0.5
    # Every image goes through the 299x299 network: 5.7 G multiply-adds (11.5 GFLOP) each.
    assert 10.0 < row["gflop_per_batch"] / 2 < 13.0
    assert row["tflop_per_s"] == pytest.approx(row["gflop_per_batch"] / 0.5 / 1e3)


def test_large_batch_bench_states_memory_and_time(tmp_path, monkeypatch):
    out = tmp_path / "large_batch.json"
    module = bench("large_batch", monkeypatch)
    module.main(["--sizes", "64", "--dims", "2", "--chunk", "16", "--out", str(out)])
    module.main(["--sizes", "64", "--dims", "2", "--chunk", "16", "--budget", "0", "--out", str(tmp_path / "b.json")])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["auction_s"] > 0 and row["sinkhorn_dense_s"] > 0 and row["sinkhorn_online_s"] > 0
    # The online geometry needs less memory than the dense cost (a 64 x 64 plan is 16 KiB).
    assert row["sinkhorn_online_mb"] < row["sinkhorn_dense_mb"]
    # Split by rows over 8 devices (the suite's fake devices), each holds less than one device does.
    assert 0 < row["sinkhorn_rows_mb"] < row["sinkhorn_dense_mb"]
    assert row["sinkhorn_online_iterations"] == row["sinkhorn_iterations"] and "sinkhorn_online_estimated" not in row
    (capped,) = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert capped["sinkhorn_online_estimated"] and "| 64 | 2 |" in (tmp_path / "b.md").read_text()


def test_ot_overhead_bench_times_otcfm_beside_icfm_on_an_image_config(tmp_path, monkeypatch):
    out = tmp_path / "ot_overhead.json"
    module = bench("ot_overhead", monkeypatch)
    module.main(
        ["--target", "tfds:digits", "--preset", "tiny", "--batch", "16", "--calls", "2"]
        + ["--data-dir", str(tmp_path / "tfds"), "--out", str(out)]
    )
    result = json.loads(out.read_text())
    assert set(result["step_s"]) == {"icfm", "otcfm_auto", "otcfm_auction"}
    assert all(s > 0 for s in result["step_s"].values())
    # On this CPU "auto" is the host network simplex.
    assert result["solvers"] == {"otcfm_auto": "network_simplex", "otcfm_auction": "auction"}
    assert (
        result["ratios"]["otcfm_auto_over_icfm"] > 0
        and "| OT-CFM | auto → network_simplex |" in (tmp_path / "ot_overhead.md").read_text()
    )
