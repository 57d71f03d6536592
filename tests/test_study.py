import dataclasses
import functools
import json
import os
import sys
import time
import types

import keras
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import study  # noqa: E402
from robgan_tf.config import AttackSettings  # noqa: E402
import study_runs  # noqa: E402
from study_runs import probe_step_seconds  # noqa: E402


def test_mcnemar_exact_p_value():
    a = np.array([True] * 10 + [False] * 90)
    b = np.array([False] * 10 + [False] * 90)
    assert study.mcnemar_p(a, b) == 2 * 0.5 ** 10  # 10 discordant pairs, all one way
    assert study.mcnemar_p(a, a) == 1.0
    c = np.array([True] * 5 + [False] * 5 + [True] * 5 + [False] * 85)
    assert study.mcnemar_p(a, c) == 1.0  # 5 each way


def test_study_refuses_unpaired_evaluations_and_a_generator_not_yet_trained(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study, "other_runs", lambda: [])
    kept = tmp_path / "study" / "pgd-at" / "study_evaluation"
    kept.mkdir(parents=True)
    settings = dataclasses.asdict(AttackSettings(square_queries=1000))
    (kept / "report.json").write_text(json.dumps({"n_examples": 1000, "settings": settings}))
    args = ["--dataset", "tiny", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "study")]
    assert study.main(args) == 1  # Square with 5,000 queries now, 1,000 then: McNemar would pair other attacks
    assert "pgd-at was evaluated on 1000 examples" in capsys.readouterr().err
    assert study.main(args + ["--square-queries", "1000", "--methods", "pgd-at", "pgd-at+gen", "robgan"]) == 1
    assert "list robgan before it" in capsys.readouterr().err  # before 45 minutes of PGD-AT, not after


def test_step_probe_times_every_stage_through_fit_with_its_guard(tiny_dataset, monkeypatch):
    from robgan_tf import methods
    guards = []

    class RecordedGuard(methods.OverfitGuard):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            guards.append(self)

    monkeypatch.setattr(methods, "OverfitGuard", RecordedGuard)
    monkeypatch.setattr(study_runs, "busy_cpu_seconds", time.process_time)  # a quiet machine: only this process
    tiny = {"width": 4, "g_width": 4, "depth": 2, "batch_size": 32, "pgd_steps": 2, "eps": 0.1}
    robgan = probe_step_seconds(methods.config_for("tiny", "robgan", tiny), tiny_dataset, steps=3, warmup=1,
                                verbose=0)
    assert set(robgan) == {"cotrain", "finetune"} and all(0 < s < 10 for s in robgan.values())
    assert set(probe_step_seconds(methods.config_for("tiny", "robgan", tiny), tiny_dataset, ("finetune",), steps=3,
                                  warmup=1, verbose=0)) == {"finetune"}
    fgsm = probe_step_seconds(methods.config_for("tiny", "fgsm-rs", tiny), tiny_dataset, steps=3, warmup=1,
                              verbose=0)
    assert set(fgsm) == {"train"} and 0 < fgsm["train"] < 10
    assert len(guards) == 3  # Rob-GAN's fine-tuning's, in both of its probes, and FGSM-RS's
    for guard in guards:  # each ran in its probe: its first check (it traces the attack) before the first step
        assert guard.previous is not None and guard.check.evaluator is not None


def test_a_probe_can_start_from_a_runs_trained_weights(tiny_dataset, tiny_data_dir, tmp_path, monkeypatch, capsys):
    from robgan_tf import methods, rundir, trainer
    config = methods.config_for("tiny", "robgan", {"width": 4, "g_width": 4, "depth": 2, "batch_size": 32,
                                                   "pgd_steps": 2, "eps": 0.1, "ema_decay": 0.9, "g_ema_decay": 0.9})
    method = methods.get("robgan")
    run = trainer.build_parts(config, tiny_dataset, method)  # a "trained" run: weights unlike a fresh build's
    for model, name in ((run.discriminator, rundir.DISCRIMINATOR), (run.generator, rundir.GENERATOR)):
        model.set_weights([w + 0.5 for w in model.get_weights()])
        rundir.save_model(model, str(tmp_path), name)
    parts = trainer.build_parts(config, tiny_dataset, method)
    study_runs.load_trained_weights(parts, str(tmp_path))
    for model, saved in ((parts.discriminator, run.discriminator), (parts.generator, run.generator)):
        for a, b in zip(model.get_weights(), saved.get_weights()):
            np.testing.assert_array_equal(a, b)
    for average in (parts.average, parts.generator_average):  # the averages start at the trained weights
        for kept, variable in zip(average.averages, average.source):
            np.testing.assert_array_equal(kept.numpy(), variable.numpy())
    # bench/step_weights.py refuses a run without its saved models, in one line, before timing anything
    import step_weights
    rundir.prepare(str(tmp_path / "unfinished"), config, ["a", "b", "c", "d"])
    assert step_weights.main(["--run", str(tmp_path / "unfinished"), "--data-dir", str(tiny_data_dir)]) == 1
    assert "has no discriminator.keras" in capsys.readouterr().err


def test_a_step_timed_while_other_processes_work_is_refused_and_timed_again(tiny_dataset, monkeypatch, capsys):
    from robgan_tf import methods
    config = methods.config_for("tiny", "pgd-at", {"width": 4, "depth": 2, "batch_size": 32, "pgd_steps": 2})
    # another process busy on one core: the machine's busy time grows by the wall clock on top of this process's
    monkeypatch.setattr(study_runs, "busy_cpu_seconds", lambda: time.process_time() + time.perf_counter())
    with pytest.raises(study_runs.BusyMachine, match=r"other processes used 1\.\d\d CPU cores while the train step"):
        probe_step_seconds(config, tiny_dataset, steps=3, warmup=1, verbose=0)
    # the study times it again after a pause, and gives up with an error after its tries
    monkeypatch.setattr(study, "PROBE_PAUSE", 0)
    assert study.probe_when_quiet(config, tiny_dataset, None, steps=3, warmup=1, verbose=0) is None
    assert capsys.readouterr().out.count("timing again") == study.PROBE_TRIES
    loads = iter([1.0] * 5 + [0.0] * 100)  # busy during the first probe only (its 5 step ends), then quiet
    monkeypatch.setattr(study_runs, "busy_cpu_seconds",
                        lambda: time.process_time() + next(loads) * time.perf_counter())
    timed = study.probe_when_quiet(config, tiny_dataset, None, steps=3, warmup=1, verbose=0)
    assert set(timed) == {"train"} and 0 < timed["train"] < 10


def test_the_machines_busy_time_counts_this_process():
    before, own = study_runs.busy_cpu_seconds(), time.process_time()
    while time.process_time() - own < 0.3:  # burn 0.3 s of CPU
        pass
    assert study_runs.busy_cpu_seconds() - before >= 0.25


def test_sized_config_fills_the_budget_and_keeps_a_fine_tuning_epoch():
    import types

    from robgan_tf import methods
    cifar = types.SimpleNamespace(x_train=np.zeros((50000, 1, 1, 3), np.uint8), y_train=np.zeros(50000, np.uint8))
    base = methods.config_for("cifar10", "robgan", {"width": 32, "g_width": 64, "n_dis": 1})
    steps = 50000 // 64
    # CIFAR-10 Rob-GAN steps as bench/step_speed.py measured them: the defaults' 100:10 split
    # alone gives 4 co-training epochs and no fine-tuning, so no mixing of generated images.
    rob = study.sized_config(base, cifar, 2700, {"cotrain": 0.761, "finetune": 0.582})
    assert (rob.epochs, rob.finetune_epochs) == (3, 2)
    assert 0.95 * 2700 < steps * (rob.epochs * 0.761 + rob.finetune_epochs * 0.582) <= 2700
    assert rob.eps_warmup_epochs == 1.0
    # With --n-dis 2 a step takes two batches (1.25 s, as the one-epoch probe ran): half the steps
    rob = study.sized_config(base.replace(n_dis=2), cifar, 2700, {"cotrain": 1.25, "finetune": 0.582})
    assert (rob.epochs, rob.finetune_epochs) == (4, 1)
    assert 0.85 * 2700 < 50000 // 128 * rob.epochs * 1.25 + steps * rob.finetune_epochs * 0.582 <= 2700
    pgd = study.sized_config(methods.config_for("cifar10", "pgd-at", {"width": 32}), cifar, 2700, {"train": 0.339})
    assert (pgd.epochs, pgd.finetune_epochs) == (10, 0)
    mnist = types.SimpleNamespace(x_train=np.zeros((60000, 1, 1, 1), np.uint8), y_train=np.zeros(60000, np.uint8))
    rob = study.sized_config(methods.config_for("mnist"), mnist, 2700, {"cotrain": 0.417, "finetune": 0.479})
    assert (rob.epochs, rob.finetune_epochs) == (3, 3)  # the MNIST study's Rob-GAN schedule


def test_every_variant_names_its_study_gan_by_folder():
    for name in study.VARIANTS:
        settings = study.variant_settings(name, "out")
        gan = study.data_source(name)
        assert settings.get("synthetic") == (os.path.join("out", gan) if gan else None)
    assert study.variant_settings("trades+cgan-data", "out")["synthetic"] == os.path.join("out", "cgan")
    assert study.variant_settings("pgd-at+robgan-de-data", "out")["synthetic"] == os.path.join("out", "robgan-de")
    assert study.variant_settings("cgan-de", "out")["projection"] is True
    assert study.variant_settings("pgd-at+cgan-de-half-data", "out")["synthetic"] == os.path.join("out", "cgan-de-half")
    assert study.VARIANTS["robgan-de-half"] == {**study.VARIANTS["robgan-de"], "finetune_epochs": 0}
    assert study.counts_generator("pgd-at+cgan-de-half-data", False)  # equal total time, always
    assert not study.counts_generator("pgd-at+cgan-de-data", False) and study.counts_generator("pgd-at+cgan-data", True)
    # a method added to the registry is a study row at its defaults with no edit here (n-fgsm, issue 17)
    assert all(study.VARIANTS[name] == {"method": name} for name in study.methods.METHODS)
    assert study.parser().parse_args(["--methods", "n-fgsm"]).methods == ["n-fgsm"]


def test_a_gan_data_variant_needs_an_epoch_left_after_its_generator():
    from robgan_tf import methods
    cifar = types.SimpleNamespace(x_train=np.zeros((1300, 1, 1, 3), np.uint8), y_train=np.zeros(1300, np.uint8))
    base = methods.config_for("cifar10", "pgd-at", {"train_limit": 1000, "val_examples": 300})
    # the generator is charged the time its training was sized to, not its wall clock (which adds its scoring)
    entry = {"step_seconds": {"train": 0.33}, "generator_seconds": 2400.0, "generator_charged_seconds": 2013.3,
             "sampling_seconds": 39.7}
    one_epoch = 1000 // 64 * 0.33
    assert study.no_time_left("pgd-at+robgan-data", "robgan", entry, one_epoch, base, cifar) is None
    problem = study.no_time_left("pgd-at+robgan-data", "robgan", entry, one_epoch - 0.1, base, cifar)
    assert "robgan's generator (its sized training) and sampling it are charged 34.2 minutes" in problem
    assert "--no-count-generator" in problem


def test_study_refuses_to_start_next_to_another_run(monkeypatch, capsys):
    monkeypatch.setattr(study, "other_runs", lambda: ["123: python train.py --dataset mnist"])
    assert study.main(["--dataset", "tiny"]) == 1
    assert "other training or test runs" in capsys.readouterr().err


def _fixed_step_seconds(config, dataset, stages=None, **_):
    """The step probe's answer without its timing runs (test_step_probe_times_... tests the probe)."""
    return {name: 0.02 for name in stages or [stage.name for stage in study.methods.get(config.method).stages]}


def test_tiny_study_trains_evaluates_and_writes_its_table(tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "other_runs", lambda: [])  # pytest itself is a test run
    monkeypatch.setattr(study, "probe_step_seconds", _fixed_step_seconds)
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("# Benchmarks\n")
    args = ["--dataset", "tiny", "--data-dir", str(tiny_data_dir), "--methods", "robgan", "pgd-at", "robgan+gen",
            "pgd-at+robgan-data", "--synthetic-n", "200", "--budget-minutes", "0.05", "--no-count-generator",
            "--out", str(tmp_path / "study"), "--benchmarks", str(benchmarks),
            "--eval-examples", "40", "--square-queries", "50", "--apgd-targets", "3",
            "--set", "width=4", "g_width=4", "depth=2", "batch_size=32", "pgd_steps=2", "eps=0.1",
            "train_limit=128", "eps_warmup_epochs=0.5", "score_every=1000"]
    assert study.main(args) == 0
    state = json.loads((tmp_path / "study" / "study.json").read_text())
    for method in ("robgan", "pgd-at"):
        entry = state["methods"][method]
        assert entry["trained"] and entry["config"]["epochs"] >= 1 and entry["load_average"]["max"] >= 0
    assert state["methods"]["pgd-at"]["config"]["finetune_epochs"] == 0
    rob = state["methods"]["robgan"]["config"]
    text = benchmarks.read_text()
    assert "<!-- study:tiny-128-0.05 -->" in text and "McNemar" in text
    assert f"| robgan | {rob['epochs']} (+{rob['finetune_epochs']}) |" in text  # epochs reached, from metrics.csv
    assert f"| pgd-at | {state['methods']['pgd-at']['config']['epochs']} (+0) |" in text
    assert (tmp_path / "study" / "study.png").stat().st_size > 1000
    # robgan+gen fine-tunes from robgan's end of co-training, whose time it counts as its own
    gen, run = state["methods"]["robgan+gen"], tmp_path / "study"
    assert gen["cotraining"] == "robgan" and gen["config"]["gen_ratio"] == 0.3
    assert set(gen["step_seconds"]) == {"finetune"}  # the only step it runs is the only one timed
    assert {k: v for k, v in gen["config"].items() if k not in ("gen_ratio", "finetune_epochs")} == \
        {k: v for k, v in rob.items() if k not in ("gen_ratio", "finetune_epochs")}
    assert gen["train_seconds"] > study.cotrain_seconds(state["methods"]["robgan"], str(run / "robgan")) > 0
    cotrain_rows = [line for line in (run / "robgan" / "metrics.csv").read_text().splitlines()
                    if line.startswith("cotrain,")]
    gen_rows = (run / "robgan+gen" / "metrics.csv").read_text().splitlines()
    assert gen_rows[1:1 + len(cotrain_rows)] == cotrain_rows and gen_rows[-1].startswith("finetune,")
    generators = [keras.saving.load_model(run / name / "generator.keras") for name in ("robgan", "robgan+gen")]
    for a, b in zip(*(g.get_weights() for g in generators)):  # G is frozen in fine-tuning
        np.testing.assert_array_equal(a, b)
    assert "| robgan+gen (co-training: robgan's) |" in text and "robgan+gen vs pgd-at: p = " in text
    # the data variant counts robgan's co-training and the sampling in its time; a plain GAN would get the
    # seconds robgan's co-training was sized to
    data_run = state["methods"]["pgd-at+robgan-data"]
    rob_steps = 128 // (32 * rob["n_dis"])
    assert study.cotrain_budget(state["methods"]["robgan"], types.SimpleNamespace(y_train=np.zeros(512))) == \
        pytest.approx(rob["epochs"] * rob_steps * state["methods"]["robgan"]["step_seconds"]["cotrain"])
    assert study.needs("cgan") == {"robgan"} and study.needs("trades+cgan-data") == {"cgan"}
    assert study.needs("cgan-de") == {"robgan-de"} and study.needs("pgd-at+robgan-de-data") == {"robgan-de"}
    assert study.gans_of(["pgd-at+cgan-data", "cgan-de", "robgan+gen", "pgd-at+gen", "pgd-at"]) == \
        {"cgan", "cgan-de", "robgan"}
    # its classifier was sized to the whole budget (--no-count-generator): a rerun counting the generator is refused
    assert study._other_counting(["pgd-at+robgan-data"], state, False) is None
    assert "pgd-at+robgan-data was sized with --no-count-generator" in study._other_counting(
        ["pgd-at+robgan-data"], state, True)
    assert "robgan's generator" in text
    assert data_run["generator_seconds"] == study.cotrain_seconds(state["methods"]["robgan"], str(run / "robgan"))
    assert data_run["generator_charged_seconds"] == round(study.cotrain_budget(
        state["methods"]["robgan"], types.SimpleNamespace(y_train=np.zeros(512))), 1)
    assert data_run["sampling_seconds"] > 0 and data_run["config"]["synthetic"].endswith("robgan-data.npz")
    assert np.bincount(np.load(run / "robgan-data.npz")["y"]).tolist() == [50] * 4
    assert "| pgd-at+robgan-data |" in text and "GAN-train" in text and "--no-count-generator" in text
    # the generator is scored once, at the end, for every row that uses it
    scores = state["generator_scores"]["robgan"]
    assert 0 <= scores["gan_train_accuracy"] <= 1 and scores["gan_train_real_accuracy"] > 0.5
    for row in ("robgan", "pgd-at+robgan-data"):
        assert f"| {100 * scores['gan_test_accuracy']:.1f} | {100 * scores['gan_train_accuracy']:.1f} |" in \
            next(line for line in text.splitlines() if line.startswith(f"| {row} |"))
    # classifier steps: pgd-at's epochs of 128 images in batches of 32; the data variant's batches hold
    # 30% real images (10 of 32), so it makes 12 steps an epoch
    summary = {r["method"]: r for r in json.loads((run / "summary.json").read_text())["rows"]}
    # the same summary goes beside BENCHMARKS.md, each row's autoattack result per test example in it: the
    # paired test can be redone from it alone
    kept = json.loads((tmp_path / "bench" / "results" / "study-tiny-128-0.05.json").read_text())
    assert kept["rows"] == list(summary.values())
    flags = {name: np.array([c == "1" for c in r["autoattack_robust_examples"]]) for name, r in summary.items()}
    assert all(len(f) == 40 for f in flags.values())
    for name in flags:
        saved = np.load(run / name / "study_evaluation" / study.report.ROBUST_EXAMPLES)
        np.testing.assert_array_equal(flags[name], saved[next(k for k in saved.files if k.startswith("autoattack@"))])
    assert kept["paired"]["robgan_vs_pgd-at_mcnemar_p"] == study.mcnemar_p(flags["robgan"], flags["pgd-at"])
    assert summary["pgd-at"]["classifier_steps"] == summary["pgd-at"]["epochs"] * 4
    assert summary["pgd-at+robgan-data"]["classifier_steps"] == summary["pgd-at+robgan-data"]["epochs"] * (128 // 10)
    before = (tmp_path / "study" / "pgd-at" / "metrics.json").stat().st_mtime
    assert study.main(args) == 0  # a finished study is not redone
    assert (tmp_path / "study" / "pgd-at" / "metrics.json").stat().st_mtime == before
    assert benchmarks.read_text().count("<!-- study:tiny-128-0.05 -->") == 1


def test_every_row_is_timed_before_the_first_one_trains(tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "other_runs", lambda: [])
    events = []

    def probe(config, dataset, stages=None, **_):
        events.append(("timed", config.method, stages))
        return _fixed_step_seconds(config, dataset, stages)

    def train(config, dataset, run_dir, **_):
        events.append(("trained", os.path.basename(run_dir)))
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "probe_step_seconds", probe)
    monkeypatch.setattr(study.trainer, "train", train)
    out = tmp_path / "study"
    with pytest.raises(KeyboardInterrupt):
        study.main(["--dataset", "tiny", "--data-dir", str(tiny_data_dir), "--out", str(out), "--benchmarks",
                    str(tmp_path / "none.md"), "--budget-minutes", "0.05", "--set", "train_limit=128",
                    "--methods", "robgan", "pgd-at+gen", "trades", "pgd-at+robgan-filtered-data", "robgan+gen"])
    # four timings back to back, then robgan trains; pgd-at+gen's step draws from robgan's generator: it waits
    assert events == [("timed", "robgan", None), ("timed", "trades", None), ("timed", "pgd-at", None),
                      ("timed", "robgan", ("finetune",)), ("trained", "robgan")]
    state = json.loads((out / "study.json").read_text())
    assert {name for name, entry in state["methods"].items() if "step_seconds" in entry} == \
        {"robgan", "trades", "pgd-at+robgan-filtered-data", "robgan+gen"}
    assert "config" in state["methods"]["robgan"] and "config" not in state["methods"]["trades"]
    # when its turn comes, the waiting row is timed (first=False), and a timed row is not timed again
    events.clear()
    dataset = study.data.load("tiny", str(tiny_data_dir))
    for first in (True, False, False):
        assert study.probe_rows(["pgd-at+gen", "trades"], state, str(out), "tiny", dataset, {}, 0, lambda: None,
                                first=first) is None
    assert events == [("timed", "pgd-at", None)] and "step_seconds" in state["methods"]["pgd-at+gen"]


def _interrupted_after_a_while(*_, **__):
    """A step of the study (training, sampling) that a Ctrl-C stops after 0.3 s."""
    time.sleep(0.3)
    raise KeyboardInterrupt


def test_interrupted_training_keeps_its_wall_clock_and_resumes(tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "other_runs", lambda: [])
    args = ["--dataset", "tiny", "--data-dir", str(tiny_data_dir), "--methods", "pgd-at", "--budget-minutes", "0.05",
            "--out", str(tmp_path / "study"), "--benchmarks", str(tmp_path / "none.md"), "--eval-examples", "40",
            "--square-queries", "50", "--apgd-targets", "3", "--set", "width=4", "depth=2", "batch_size=32",
            "pgd_steps=2", "eps=0.1", "train_limit=128"]
    real_train = study.trainer.train

    monkeypatch.setattr(study.trainer, "train", _interrupted_after_a_while)
    with pytest.raises(KeyboardInterrupt):
        study.main(args)
    entry = json.loads((tmp_path / "study" / "study.json").read_text())["methods"]["pgd-at"]
    assert not entry.get("trained") and entry["train_seconds"] >= 0.3 and entry["load_samples"]
    monkeypatch.setattr(study.trainer, "train", real_train)
    assert study.main(args) == 0
    resumed = json.loads((tmp_path / "study" / "study.json").read_text())["methods"]["pgd-at"]
    assert resumed["trained"] and resumed["train_seconds"] > entry["train_seconds"]
    assert len(resumed["load_samples"]) > len(entry["load_samples"])
    recorded = (tmp_path / "study" / "summary.md").read_text()
    assert "--eval-examples 40 --apgd-targets 3" in recorded and "--set width=4 depth=2" in recorded
    assert "--seed" not in recorded  # a default is not repeated


def test_a_killed_training_has_saved_its_time_so_far(tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "other_runs", lambda: [])
    monkeypatch.setattr(study, "probe_step_seconds", lambda *a, **k: {"train": 0.01})
    monkeypatch.setattr(study, "BEAT_SECONDS", 0.1)
    on_disk = []

    def killed_after_a_while(*_, **__):  # what study.json holds when a SIGKILL (no finally) would strike
        time.sleep(0.5)
        on_disk.append(json.loads((tmp_path / "study" / "study.json").read_text())["methods"]["pgd-at"])
        raise KeyboardInterrupt

    monkeypatch.setattr(study.trainer, "train", killed_after_a_while)
    with pytest.raises(KeyboardInterrupt):
        study.main(["--dataset", "tiny", "--data-dir", str(tiny_data_dir), "--methods", "pgd-at", "--out",
                    str(tmp_path / "study"), "--benchmarks", str(tmp_path / "none.md"), "--set", "train_limit=128"])
    (entry,) = on_disk
    assert 0.2 <= entry["train_seconds"] < 5 and len(entry["load_samples"]) >= 3  # beats while it ran


def test_a_half_gan_gets_its_share_of_the_budget_for_co_training_only(tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "other_runs", lambda: [])
    monkeypatch.setattr(study, "probe_step_seconds", lambda *a, **k: {"cotrain": 0.01, "finetune": 0.01})
    monkeypatch.setattr(study.trainer, "train", _interrupted_after_a_while)
    for name in ("robgan", "robgan-half"):
        with pytest.raises(KeyboardInterrupt):
            study.main(["--dataset", "tiny", "--data-dir", str(tiny_data_dir), "--methods", name, "--out",
                        str(tmp_path / name), "--benchmarks", str(tmp_path / "none.md"), "--budget-minutes", "1",
                        "--set", "train_limit=128"])
    sized = {name: study.Config(**json.loads((tmp_path / name / "study.json").read_text())["methods"][name]["config"])
             for name in ("robgan", "robgan-half")}
    steps = study.steps_per_epoch(sized["robgan-half"], study.data.load("tiny", str(tiny_data_dir)))[0]
    assert sized["robgan-half"].finetune_epochs == 0 and sized["robgan"].finetune_epochs > 0
    assert sized["robgan-half"].epochs * steps * 0.01 <= 30 < (sized["robgan-half"].epochs + 1) * steps * 0.01


def test_an_interrupted_sampling_keeps_its_seconds(tmp_path, monkeypatch):
    from robgan_tf import models
    keras.utils.set_random_seed(0)
    (tmp_path / "robgan").mkdir()
    models.build_generator((16, 16, 1), 4, width=4, z_dim=8).save(tmp_path / "robgan" / "generator.keras")
    state, saved = {}, []
    real_write = study.synthetic.write

    monkeypatch.setattr(study.synthetic, "write", _interrupted_after_a_while)
    monkeypatch.setattr(study, "BEAT_SECONDS", 0.1)
    with pytest.raises(KeyboardInterrupt):
        study.sample_set("robgan", state, str(tmp_path), 40, 0, lambda: saved.append(dict(state)))
    beats = [entry["robgan_sampling_seconds_so_far"] for entry in saved]
    # saved while it ran (a kill's loss), rising, then the whole time at the Ctrl-C (the time before the first save
    # includes loading the generator, which a slow host makes longer than the 0.3 s of sampling)
    assert len(beats) >= 3 and beats == sorted(beats) and beats[0] < beats[-1]
    assert set(saved[-1]) == {"robgan_sampling_seconds_so_far"}
    assert 0.3 <= saved[-1]["robgan_sampling_seconds_so_far"] < 30
    monkeypatch.setattr(study.synthetic, "write", lambda *a, **k: real_write(*a, **{**k, "verbose": 0}))
    interrupted = saved[-1]["robgan_sampling_seconds_so_far"]
    path, seconds, kept = study.sample_set("robgan", state, str(tmp_path), 40, 0, lambda: saved.append(dict(state)))
    assert seconds >= interrupted and set(state) == {"robgan_sampling_seconds"}
    assert kept is None  # an unfiltered set keeps all it asks for
    assert np.bincount(np.load(path)["y"]).tolist() == [10] * 4


def test_a_filtered_set_is_judged_by_its_gan_runs_own_classifier(tmp_path, monkeypatch):
    from robgan_tf import models
    keras.utils.set_random_seed(0)
    (tmp_path / "robgan").mkdir()
    models.build_generator((16, 16, 1), 4, width=4, z_dim=8).save(tmp_path / "robgan" / "generator.keras")
    favours_0 = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Flatten(), keras.layers.Dense(
        4, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant([2.0, 0.0, 0.0, 0.0]))])
    favours_0.save(tmp_path / "robgan" / "classifier.keras")  # its top class is 0 for every image
    state = {}
    monkeypatch.setattr(study.synthetic, "write", functools.partial(study.synthetic.write, verbose=0, max_chunks=2))
    with pytest.raises(study.synthetic.SampleError, match="the filter kept only 0"):  # classes 1-3 never pass
        study.sample_set("robgan", state, str(tmp_path), 40, 0, lambda: None, threshold=0.0)
    assert state["filter_threshold"] == 0.0 and "robgan-filtered_sampling_seconds_so_far" in state
    assert study._other_threshold(["pgd-at+robgan-filtered-data"], state, 0.5).startswith("the study's filtered")
    assert study._other_threshold(["pgd-at+robgan-data"], state, 0.5) is None
    kept = np.load(tmp_path / "robgan-filtered-data.npz.parts" / "chunk_00000.npz")["y"]
    assert len(kept) == 10 and set(kept) == {0}  # the unfiltered set's chunks would be elsewhere and hold all 4

    assert study.filtered("trades+cgan-de-filtered-data") and not study.filtered("trades+cgan-de-data")


def _finished_study_with_a_generator(folder, data, **settings):
    """A study folder as bench/study.py leaves it after training cgan-de-half (3 epochs) on `data` with
    `settings` and drawing its filtered set (no training: the files stand for the run's)."""
    config = study.base_config("tiny", study.VARIANTS["cgan-de-half"], settings, 0).replace(epochs=3)
    (folder / "cgan-de-half").mkdir(parents=True)
    (folder / "cgan-de-half" / "generator.keras").write_text("its generator")
    (folder / "cgan-de-half" / "config.json").write_text(json.dumps({"data": data.identity()}))
    np.savez(folder / "cgan-de-half-filtered-data.npz", x=np.zeros((8, 16, 16, 1), np.uint8), y=np.arange(8) % 4)
    (folder / "cgan-de-half-filtered-data.json").write_text(json.dumps({"kept_fraction": 0.5, "n": 8, "seed": 0}))
    state = {"methods": {"cgan-de-half": {"config": config.as_dict(), "trained": True, "train_seconds": 70.0,
                                          "step_seconds": {"cotrain": 0.05}, "budget_minutes": 30}},
             "filter_threshold": 0.0, "cgan-de-half-filtered_sampling_seconds": 6.0,
             "generator_scores": {"cgan-de-half": {"gan_test_accuracy": 0.8}}}
    (folder / "study.json").write_text(json.dumps(state))
    return state


def test_a_study_at_another_budget_takes_its_generator_from_an_earlier_study(tiny_data_dir, tmp_path, monkeypatch,
                                                                            capsys):
    monkeypatch.setattr(study, "other_runs", lambda: [])
    monkeypatch.setattr(study, "probe_step_seconds", _fixed_step_seconds)
    monkeypatch.setattr(study.trainer, "train", _interrupted_after_a_while)
    dataset = study.data.load("tiny", str(tiny_data_dir))
    source = _finished_study_with_a_generator(tmp_path / "at-30", dataset, train_limit=128)
    args = ["--dataset", "tiny", "--data-dir", str(tiny_data_dir), "--methods", "pgd-at+cgan-de-half-filtered-data",
            "--budget-minutes", "60", "--synthetic-n", "8", "--benchmarks", str(tmp_path / "none.md"),
            "--set", "train_limit=128"]
    # refused before anything is copied: a generator trained on other images (another subset), on other data,
    # or whose set was drawn otherwise
    _finished_study_with_a_generator(tmp_path / "other-images", dataset, train_limit=256)
    _finished_study_with_a_generator(tmp_path / "other-data", study.data.Dataset(
        "tiny", dataset.x_train[::-1], dataset.y_train[::-1], dataset.x_test, dataset.y_test), train_limit=128)
    for folder, why in ((tmp_path / "other-images", "was trained with other settings: train_limit=256 (here 128)"),
                        (tmp_path / "other-data", "was trained on other data"),
                        (tmp_path / "at-30", "holds 8 samples of seed 0")):
        extra = ["--synthetic-n", "20"] if folder.name == "at-30" else []
        assert study.main(args + extra + ["--out", str(tmp_path / "refused"), "--generators-from", str(folder)]) == 1
        assert why in capsys.readouterr().err
        assert sorted(os.listdir(tmp_path / "refused")) == []
    # without it, the data row would need the generator trained first in this study
    assert study.main(args + ["--out", str(tmp_path / "alone")]) == 1
    assert "list cgan-de-half before it" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):  # the data row's training starts: its generator and set were taken
        study.main(args + ["--out", str(tmp_path / "at-60"), "--generators-from", str(tmp_path / "at-30")])
    state = json.loads((tmp_path / "at-60" / "study.json").read_text())
    taken = state["methods"]["cgan-de-half"]
    assert taken == {**source["methods"]["cgan-de-half"], "adopted_from": str(tmp_path / "at-30")}
    assert (tmp_path / "at-60" / "cgan-de-half" / "generator.keras").read_text() == "its generator"
    np.testing.assert_array_equal(np.load(tmp_path / "at-60" / "cgan-de-half-filtered-data.npz")["y"],
                                  np.arange(8) % 4)
    assert state["generator_scores"] == source["generator_scores"] and state["filter_threshold"] == 0.0
    assert not [f for f in os.listdir(tmp_path / "at-60") if f.endswith(".partial")]
    # the row pays for the generator's sized training in the earlier study (its 3 epochs' steps at 0.05 s) and
    # the sampling, and its classifier gets the rest of the 60 minutes
    row = state["methods"]["pgd-at+cgan-de-half-filtered-data"]
    charged = 3 * study.steps_per_epoch(study.Config(**taken["config"]), dataset)[0] * 0.05
    assert row["generator_charged_seconds"] == round(charged, 1) > 0 and row["sampling_seconds"] == 6.0
    steps = study.steps_per_epoch(study.Config(**row["config"]), dataset)[0]
    assert row["config"]["epochs"] == int((3600 - row["generator_charged_seconds"] - 6.0) / (steps * 0.02))
    assert row["kept_fraction"] == 0.5 and row["config"]["synthetic"] == str(
        tmp_path / "at-60" / "cgan-de-half-filtered-data.npz")
    # a resumed study has what it took: the earlier study's folder is no longer needed
    os.rename(tmp_path / "at-30", tmp_path / "moved")
    with pytest.raises(KeyboardInterrupt):
        study.main(args + ["--out", str(tmp_path / "at-60"), "--generators-from", str(tmp_path / "at-30")])
    assert study.section_name(study.parser().parse_args(args)) == "tiny-128-60"
    assert study.section_name(study.parser().parse_args(["--dataset", "mnist"])) == "mnist"


def test_a_run_cannot_start_from_a_co_training_it_does_not_have(tmp_path):
    with pytest.raises(study.rundir.RunDirError, match="no checkpoint from the end of its co-training"):
        study.start_from_cotrained(str(tmp_path / "pgd-at"), str(tmp_path / "robgan+gen"), ())
