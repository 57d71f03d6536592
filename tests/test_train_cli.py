import json
import pathlib

import numpy as np
import pytest

import train
from robgan_tf import data, methods, rundir, trainer
from robgan_tf.callbacks import StepCheckpoint

from conftest import TINY_TRAIN_ARGS


def run(data_dir, out, *extra):
    args = TINY_TRAIN_ARGS
    if "fgsm-rs" in extra or "n-fgsm" in extra:  # their attack is one step by definition; --pgd-steps is refused
        i = args.index("--pgd-steps")
        args = args[:i] + args[i + 2:]
    return train.main(args + ["--data-dir", str(data_dir), "--out", str(out), *extra])


def test_end_to_end_run_writes_every_output(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(tiny_data_dir, out, "--epochs", "2", "--finetune-epochs", "1") == 0
    for name in (rundir.CONFIG, rundir.GENERATOR, rundir.DISCRIMINATOR, rundir.CLASSIFIER,
                 rundir.METRICS_CSV, rundir.METRICS_JSON, "samples/epoch_001.png", "samples/epoch_003.png"):
        assert (out / name).is_file(), name
    assert any((out / rundir.LOGS).rglob("events.out.tfevents*"))
    metrics = json.loads((out / rundir.METRICS_JSON).read_text())
    for key in ("clean_accuracy", "pgd20_accuracy", "gan_test_accuracy", "sample_diversity"):
        assert 0.0 <= metrics[key] <= (1.0 if key != "sample_diversity" else 10.0), key
    assert metrics["frechet_distance"] >= 0.0  # on the reference classifier's features
    assert metrics["eps"] == pytest.approx(0.1) and metrics["eval_split"] == "test"
    rows = (out / rundir.METRICS_CSV).read_text().splitlines()
    assert rows[0].split(",") == list(methods.get("robgan").metric_columns())
    assert [r.split(",")[:2] for r in rows[1:]] == [["cotrain", "1"], ["cotrain", "2"], ["finetune", "3"]]

    import keras
    classifier = keras.saving.load_model(out / rundir.CLASSIFIER)
    assert classifier.output.shape[-1] == 4
    generator = keras.saving.load_model(out / rundir.GENERATOR)
    assert generator([np.zeros((2, 128), np.float32), np.array([0, 3])]).shape == (2, 16, 16, 1)
    discriminator = keras.saving.load_model(out / rundir.DISCRIMINATOR)
    assert set(discriminator(np.zeros((1, 16, 16, 1), np.float32))) == {"adv", "cls"}
    assert [v.path for v in classifier.weights if v.path.endswith("vector_u")]  # the default for "tiny": all
    capsys.readouterr()
    assert run(tiny_data_dir, out, "--epochs", "2", "--finetune-epochs", "1") == 0
    assert "is finished" in capsys.readouterr().out


def test_rerun_with_other_settings_is_refused(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(tiny_data_dir, out, "--epochs", "1", "--finetune-epochs", "0") == 0
    assert run(tiny_data_dir, out, "--epochs", "2", "--finetune-epochs", "0") == 1
    err = capsys.readouterr().err
    assert "other settings" in err and "epochs: 1 -> 2" in err and "--overwrite" in err
    assert run(tiny_data_dir, out, "--epochs", "2", "--finetune-epochs", "0", "--overwrite") == 0


def test_interrupted_run_resumes_from_the_last_checkpoint(tiny_data_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    original = StepCheckpoint.on_train_batch_end

    def crash_after_second_save(self, batch, logs=None):
        original(self, batch, logs)
        if int(self.progress.epoch.numpy()) == 1 and int(self.progress.batch.numpy()) == 2:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(StepCheckpoint, "on_train_batch_end", crash_after_second_save)
    args = ("--epochs", "2", "--finetune-epochs", "0", "--checkpoint-every", "2", "--n-dis", "1")
    assert run(tiny_data_dir, out, *args) == 130
    assert "interrupted; rerun the same command to resume" in capsys.readouterr().err
    monkeypatch.setattr(StepCheckpoint, "on_train_batch_end", original)
    assert run(tiny_data_dir, out, *args) == 0
    assert "resuming cotrain epoch 2 at batch 2/4" in capsys.readouterr().out
    rows = rundir.read_metrics_rows(out)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert [r["resumed_at_batch"] for r in rows] == ["", "2"]  # epoch 2's row covers batches 3-4 only

    import tensorflow as tf
    reader = tf.train.load_checkpoint(str(out / rundir.CHECKPOINTS))
    steps = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if "iteration" in k}
    d_steps = [v for k, v in steps.items() if k.startswith("d_optimizer")]
    assert d_steps == [8], f"2 epochs x 4 batches, no batch repeated or skipped: {steps}"


def test_sigterm_says_how_to_resume_and_the_rerun_resumes(tiny_data_dir, tmp_path, capsys, monkeypatch):
    import os
    import signal

    out = tmp_path / "run"
    original = StepCheckpoint.on_train_batch_end

    def terminated_after_a_save(self, batch, logs=None):
        original(self, batch, logs)
        if int(self.progress.batch.numpy()) == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(StepCheckpoint, "on_train_batch_end", terminated_after_a_save)
    args = ("--method", "pgd-at", "--epochs", "1", "--checkpoint-every", "2")
    assert run(tiny_data_dir, out, *args) == 143
    assert "terminated; rerun the same command to resume" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is not train.main.__globals__["_stop"]  # the handler is put back
    monkeypatch.setattr(StepCheckpoint, "on_train_batch_end", original)
    assert run(tiny_data_dir, out, *args) == 0
    assert "resuming train epoch 1 at batch 2/" in capsys.readouterr().out


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_at_the_epoch_end_checkpoint_keeps_one_row_and_one_grid_per_epoch(tiny_data_dir, tmp_path, when,
                                                                                 monkeypatch):
    """Issue 16.3: killed just before or just after epoch 1's end-of-epoch checkpoint (its report
    already written), the resumed run still has exactly one metrics.csv row and one grid per epoch."""
    out = tmp_path / "run"
    original = StepCheckpoint.on_epoch_end

    def killed_at_the_first_epoch_end(self, epoch, logs=None):
        if when == "after":
            original(self, epoch, logs)
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(StepCheckpoint, "on_epoch_end", killed_at_the_first_epoch_end)
    args = ("--epochs", "2", "--finetune-epochs", "1", "--n-dis", "1")
    assert run(tiny_data_dir, out, *args) == 130
    monkeypatch.setattr(StepCheckpoint, "on_epoch_end", original)
    assert run(tiny_data_dir, out, *args) == 0
    rows = rundir.read_metrics_rows(out)
    assert [(r["stage"], r["epoch"]) for r in rows] == [("cotrain", "1"), ("cotrain", "2"), ("finetune", "3")]
    assert sorted(p.name for p in (out / rundir.SAMPLES).iterdir()) == [
        "epoch_001.png", "epoch_002.png", "epoch_003.png"]


def test_corrupt_checkpoint_gives_a_clear_error(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(tiny_data_dir, out, "--epochs", "1", "--finetune-epochs", "0") == 0
    for f in (out / rundir.CHECKPOINTS).glob("*.data-*"):
        f.write_bytes(b"garbage")
    assert run(tiny_data_dir, out, "--epochs", "1", "--finetune-epochs", "0") == 1
    err = capsys.readouterr().err
    assert "cannot be restored" in err and "--overwrite" in err


FINISHED = ("--method", "pgd-at", "--epochs", "1")  # the settings of the finished_run fixture


@pytest.fixture(scope="module")
def trained_once(tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run(tiny_data_dir, out, *FINISHED) == 0
    return out


@pytest.fixture
def finished_run(trained_once, tmp_path):
    """A copy of a finished one-epoch PGD-AT run on the tiny data, for a test to damage."""
    import shutil

    return pathlib.Path(shutil.copytree(trained_once, tmp_path / "run"))


def test_overwrite_refuses_a_folder_that_is_not_a_run_and_moves_a_run_aside(tiny_data_dir, finished_run, tmp_path,
                                                                            capsys):
    work = tmp_path / "mywork"
    (work / "sub").mkdir(parents=True)
    (work / "notes.tex").write_text("x")
    assert run(tiny_data_dir, work, "--method", "pgd-at", "--epochs", "1", "--overwrite") == 1
    assert "not a run directory" in capsys.readouterr().err
    assert (work / "notes.tex").read_text() == "x" and (work / "sub").is_dir()
    out = finished_run
    (out / "evaluation").mkdir()
    (out / "evaluation" / "report.md").write_text("kept")
    assert run(tiny_data_dir, out, "--method", "pgd-at", "--epochs", "2", "--overwrite") == 0
    assert "was moved to" in capsys.readouterr().out
    aside = tmp_path / "run.replaced"
    assert (aside / "evaluation" / "report.md").read_text() == "kept"
    assert json.loads((aside / rundir.CONFIG).read_text())["epochs"] == 1
    assert json.loads((out / rundir.CONFIG).read_text())["epochs"] == 2 and not (out / "evaluation").exists()


def test_a_corrupt_checkpoint_state_file_resumes_from_the_newest_checkpoint_on_disk(tiny_data_dir, finished_run,
                                                                                     capsys):
    out = finished_run
    rows = rundir.read_metrics_rows(out)
    (out / rundir.CHECKPOINTS / "checkpoint").write_bytes(b"\x00garbage{{")
    capsys.readouterr()
    assert run(tiny_data_dir, out, *FINISHED) == 0
    printed = capsys.readouterr().out
    assert "newest checkpoint on disk" in printed and "is finished" in printed
    assert rundir.read_metrics_rows(out) == rows  # no epoch trained again


@pytest.mark.parametrize("damage", ["truncated", "crc", "random bytes", "missing folder"])
def test_a_damaged_data_file_or_folder_is_one_clear_line(tiny_dataset, tmp_path, damage):
    folder = tmp_path / "data"
    folder.mkdir()
    np.savez(folder / "tiny_train.npz", x=tiny_dataset.x_train, y=tiny_dataset.y_train.astype(np.uint8))
    np.savez(folder / "tiny_test.npz", x=tiny_dataset.x_test, y=tiny_dataset.y_test.astype(np.uint8))
    path = folder / "tiny_train.npz"
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[:len(raw) // 2])
    elif damage == "crc":  # flip bytes inside the stored array, so the zip's checksum no longer holds
        path.write_bytes(raw[:2000] + bytes(b ^ 0xFF for b in raw[2000:2100]) + raw[2100:])
    elif damage == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(data.DataError) as error:
        data.load("tiny", str(folder if damage != "missing folder" else tmp_path / "nowhere"))
    message = str(error.value)
    assert "\n" not in message and ("no such folder" if damage == "missing folder" else "tiny_train.npz") in message
    assert "pickle" not in message


def test_model_files_deleted_from_a_finished_run_are_rewritten_from_its_checkpoint(tiny_data_dir, finished_run,
                                                                                   capsys):
    import evaluate

    out = finished_run
    before = (out / rundir.CLASSIFIER).read_bytes()
    (out / rundir.CLASSIFIER).unlink()
    capsys.readouterr()
    assert evaluate.main(["--model", str(out), "--data-dir", str(tiny_data_dir)]) == 1
    assert "without classifier.keras: rerun train.py" in capsys.readouterr().err
    assert run(tiny_data_dir, out, *FINISHED) == 0
    assert "rewrote classifier.keras from the checkpoint" in capsys.readouterr().out
    import keras

    from robgan_tf import models
    rewritten, discriminator = (keras.saving.load_model(out / n) for n in (rundir.CLASSIFIER, rundir.DISCRIMINATOR))
    assert len(before) > 0 and all(np.array_equal(a, b) for a, b in zip(
        rewritten.get_weights(), models.classifier_from(discriminator).get_weights()))


def test_resuming_on_other_data_is_refused(tiny_data_dir, finished_run, tmp_path, capsys):
    from conftest import make_images

    out = finished_run
    other = tmp_path / "other"
    other.mkdir()
    for split, seed in (("train", 5), ("test", 6)):
        x, y = make_images(512 if split == "train" else 128, seed=seed)
        np.savez(other / f"tiny_{split}.npz", x=x, y=y)
    rows = rundir.read_metrics_rows(out)
    assert run(other, out, *FINISHED) == 1
    err = capsys.readouterr().err
    assert "was trained on other data" in err and "same --data-dir" in err
    assert rundir.read_metrics_rows(out) == rows
    assert run(tiny_data_dir, out, *FINISHED) == 0  # its own data: fine


def test_missing_data_file_gives_one_clear_line(tmp_path, capsys):
    assert train.main(["--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing data file" in err[0] and "mnist_train.npz" in err[0]


def test_unknown_dataset_name_is_a_clear_error(tmp_path, capsys):
    assert train.main(["--dataset", "no_such_set", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown dataset 'no_such_set'" in err[0] and "--data-dir" in err[0]


def test_batch_larger_than_the_data_is_a_clear_error_before_anything_is_written(tiny_data_dir, tmp_path, capsys):
    assert run(tiny_data_dir, tmp_path / "r", "--train-limit", "16", "--epochs", "1") == 1
    assert "cannot fill one step" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_settings_that_cannot_apply_are_refused_before_anything_starts(tiny_data_dir, tmp_path, capsys):
    assert run(tiny_data_dir, tmp_path / "r", "--distribute", "multiworker", "--overwrite") == 1
    assert "remove the run directory first" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert run(tiny_data_dir, tmp_path / "r", "--method", "fgsm-rs", "--pgd-step-size", "0.01") == 1
    assert "does not apply to --method fgsm-rs" in capsys.readouterr().err
    assert run(tiny_data_dir, tmp_path / "r", "--method", "pgd-at", "--spectral-norm", "all") == 1
    assert "--spectral-norm does not apply to --method pgd-at" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_gan_settings_default_per_dataset():
    for dataset, expected in (("mnist", (1, "head")), ("cifar10", (2, "all"))):
        settings = train.config_from(train.parser().parse_args(["--dataset", dataset]))
        assert (settings.n_dis, settings.spectral_norm) == expected
    assert train.config_from(train.parser().parse_args(["--dataset", "cifar10", "--n-dis", "1"])).n_dis == 1


@pytest.mark.parametrize("x, y, message", [
    (np.zeros((4, 16, 16, 2), np.uint8), np.zeros(4, np.uint8), "C in \\(1, 3\\)"),
    (np.zeros((4, 16, 16, 1), np.float32), np.zeros(4, np.uint8), "uint8"),
    (np.zeros((4, 16, 16, 1), np.uint8), np.zeros(3, np.uint8), "labels"),
])
def test_bad_arrays_are_rejected(tmp_path, x, y, message):
    for split in ("train", "test"):
        np.savez(tmp_path / f"bad_{split}.npz", x=x, y=y)
    with pytest.raises(data.DataError, match=message):
        data.load("bad", str(tmp_path))


def test_tfds_path_with_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=30):
        ds = data.load("mnist", tfds_dir="/nonexistent-tfds-dir")
    assert ds.image_shape == (28, 28, 1) and ds.x_train.dtype == np.uint8
    assert len(ds.y_train) == 30 and ds.class_names[:2] == ["0", "1"]


def test_unprepared_tfds_dataset_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_online", lambda: False)
    with pytest.raises(data.DataError, match="not prepared .* cannot download"):
        data.load("mnist", tfds_dir=str(tmp_path))


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(
        tiny_data_dir, tmp_path, capsys, monkeypatch):
    from robgan_tf.callbacks import NonFiniteGuard

    out = tmp_path / "run"
    original = NonFiniteGuard.on_train_batch_end

    def nan_at_batch(n):
        def guard(self, batch, logs=None):
            original(self, batch, logs={**logs, "d_loss": float("nan")} if batch == n else logs)
        return guard

    monkeypatch.setattr(NonFiniteGuard, "on_train_batch_end", nan_at_batch(0))  # before any checkpoint
    args = ("--epochs", "1", "--finetune-epochs", "0", "--checkpoint-every", "2", "--n-dis", "1")
    assert run(tiny_data_dir, tmp_path / "early", *args) == 1
    err = capsys.readouterr().err
    assert "no checkpoint had been written yet" in err and "--overwrite" in err and "is kept" not in err
    monkeypatch.setattr(NonFiniteGuard, "on_train_batch_end", nan_at_batch(2))
    assert run(tiny_data_dir, out, *args) == 1
    err = capsys.readouterr().err
    assert "d_loss became nan" in err and "last good checkpoint" in err and "--overwrite" in err
    monkeypatch.setattr(NonFiniteGuard, "on_train_batch_end", original)
    assert run(tiny_data_dir, out, *args) == 0
    assert "resuming cotrain epoch 1 at batch 2/4" in capsys.readouterr().out


@pytest.mark.parametrize("flags, gpus, expected", [("fpu avx2 avx512_bf16 avx512f", [], "mixed_bfloat16"),
                                                   ("fpu avx2 amx_bf16", [], "mixed_bfloat16"),
                                                   ("fpu avx2 avx512f", [], "none"),
                                                   ("fpu avx2 avx512_bf16", [(8, 0)], "mixed_bfloat16"),
                                                   ("fpu avx2 avx512_bf16", [(8, 6), (7, 5)], "none")])
def test_auto_precision_is_bfloat16_where_the_hardware_computes_it(monkeypatch, tmp_path, flags, gpus, expected):
    import tensorflow as tf

    from robgan_tf import distribute

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(distribute, "CPUINFO", str(cpuinfo))
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: list(range(len(gpus))))
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda i: {"compute_capability": gpus[i]})
    assert methods.config_for("mnist", settings={"mixed_precision": "auto"}).mixed_precision == expected
    assert methods.config_for("mnist", settings={"mixed_precision": "none"}).mixed_precision == "none"


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_run_keeps_losses_finite(tiny_data_dir, tmp_path, capsys, precision):
    import keras

    out = tmp_path / "run"
    assert run(tiny_data_dir, out, "--epochs", "1", "--finetune-epochs", "1", "--mixed-precision", precision) == 0
    assert f"computing in {precision}" in capsys.readouterr().out  # the log says what computes
    assert keras.mixed_precision.global_policy().name == "float32", "the global policy is restored"
    rows = [dict(zip(methods.get("robgan").metric_columns(), r.split(","))) for r in
            (out / rundir.METRICS_CSV).read_text().splitlines()[1:]]
    assert np.isfinite(float(rows[0]["d_loss"])) and np.isfinite(float(rows[0]["g_loss"]))
    assert np.isfinite(float(rows[1]["loss"]))
    classifier = keras.saving.load_model(out / rundir.CLASSIFIER)
    assert classifier.get_layer("block0").compute_dtype == precision.split("_")[1]
    assert classifier.output.dtype == "float32"


@pytest.mark.parametrize("method", ["pgd-at", "fgsm-rs", "trades"])
def test_baseline_methods_write_the_run_directory(tiny_data_dir, tmp_path, method):
    import keras

    out = tmp_path / method
    assert run(tiny_data_dir, out, "--method", method, "--epochs", "2") == 0
    for name in (rundir.CONFIG, rundir.DISCRIMINATOR, rundir.CLASSIFIER, rundir.METRICS_CSV, rundir.METRICS_JSON):
        assert (out / name).is_file(), name
    assert not (out / rundir.GENERATOR).exists()
    metrics = json.loads((out / rundir.METRICS_JSON).read_text())
    assert metrics["method"] == method and 0 <= metrics["pgd20_accuracy"] <= metrics["clean_accuracy"] <= 1
    assert "gan_test_accuracy" not in metrics
    rows = rundir.read_metrics_rows(out)
    assert [(r["stage"], r["epoch"]) for r in rows] == [("train", "1"), ("train", "2")]
    guarded = method == "fgsm-rs"  # its guard's check of each epoch is in the row; the others have no such column
    assert [r["guard_pgd10_acc"] != "" for r in rows] == [True, True] if guarded else "guard_pgd10_acc" not in rows[0]
    classifier = keras.saving.load_model(out / rundir.CLASSIFIER)
    assert classifier.output.shape[-1] == 4
    # "tiny" takes CIFAR-10's defaults, spectral norm on all of Rob-GAN's D; a baseline has none
    assert methods.config_for("tiny").spectral_norm == "all"
    assert not [v.path for v in classifier.weights if v.path.endswith("vector_u")]


class FiringGuard(methods.OverfitGuard):
    """Catastrophic overfitting forced at every epoch end: the "previous epoch's weights" it
    restores are zeros, so the saved classifier and checkpoint show whether they are what the run
    kept. `starts` records, at each start, whether the classifier began from those zeros."""

    starts = []

    def on_train_begin(self, logs=None):
        self.starts.append(all(not np.any(w) for w in self.model.classifier.get_weights()))

    def on_epoch_end(self, epoch, logs=None):
        for v in self.model.classifier.weights:
            v.assign(np.zeros(v.shape, v.dtype))
        self.fired = {"epoch": epoch + 1, "pgd10_accuracy": 0.0, "previous": 0.5}
        self.model.stop_training = True


def _zeros(path):
    import keras
    return all(not np.any(w) for w in keras.saving.load_model(path).get_weights())


def test_fgsm_rs_early_stop_is_reported_and_survives_a_crash_before_the_final_metrics(tiny_data_dir, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setattr(methods, "OverfitGuard", FiringGuard)
    monkeypatch.setattr(FiringGuard, "starts", [])
    real_metrics = trainer.final_metrics

    def crash(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "final_metrics", crash)
    out = tmp_path / "fgsm"
    assert run(tiny_data_dir, out, "--method", "fgsm-rs", "--epochs", "2") == 130
    monkeypatch.setattr(trainer, "final_metrics", real_metrics)
    assert run(tiny_data_dir, out, "--method", "fgsm-rs", "--epochs", "2") == 0
    metrics = json.loads((out / rundir.METRICS_JSON).read_text())
    assert metrics["early_stop"] == {"epoch": 1, "pgd10_accuracy": 0.0, "previous": 0.5, "stage": "train"}
    assert len((out / rundir.METRICS_CSV).read_text().splitlines()) == 2  # one epoch, then the stop
    assert _zeros(out / rundir.CLASSIFIER)


def test_n_fgsm_guard_runs_before_the_epoch_end_checkpoint(tiny_data_dir, tmp_path, monkeypatch):
    # killed just after the first epoch-end checkpoint, before the stop is recorded: the resumed run
    # must start from the weights the guard restored, not from the collapsed ones
    monkeypatch.setattr(methods, "OverfitGuard", FiringGuard)
    monkeypatch.setattr(FiringGuard, "starts", [])
    original = StepCheckpoint.on_epoch_end

    def killed_after_the_epoch_end_checkpoint(self, epoch, logs=None):
        original(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(StepCheckpoint, "on_epoch_end", killed_after_the_epoch_end_checkpoint)
    out = tmp_path / "nfgsm"
    assert run(tiny_data_dir, out, "--method", "n-fgsm", "--epochs", "3") == 130
    assert not (out / rundir.EARLY_STOP).exists()
    monkeypatch.setattr(StepCheckpoint, "on_epoch_end", original)
    assert run(tiny_data_dir, out, "--method", "n-fgsm", "--epochs", "3") == 0
    assert FiringGuard.starts == [False, True], "the resume starts from the restored weights"
    assert json.loads((out / rundir.METRICS_JSON).read_text())["early_stop"]["epoch"] == 2
    assert _zeros(out / rundir.CLASSIFIER)


def test_robgan_fine_tuning_is_guarded_and_co_training_is_not(tiny_data_dir, tmp_path, monkeypatch):
    # the guard watches fine-tuning only (co-training's D is not the classifier alone), on the first training batch
    # as Wong et al.'s does (nothing is held out of Rob-GAN's data); when it fires in fine-tuning's first epoch of
    # two, fine-tuning stops there with the restored weights and the run ends normally, the stop recorded
    monkeypatch.setattr(methods, "OverfitGuard", FiringGuard)
    monkeypatch.setattr(FiringGuard, "starts", [])
    out = tmp_path / "robgan"
    assert run(tiny_data_dir, out, "--epochs", "1", "--finetune-epochs", "2") == 0
    assert len(FiringGuard.starts) == 1, "one guard, built for fine-tuning"
    early_stop = json.loads((out / rundir.METRICS_JSON).read_text())["early_stop"]
    assert (early_stop["stage"], early_stop["epoch"]) == ("finetune", 1)
    rows = (out / rundir.METRICS_CSV).read_text().splitlines()[1:]
    assert [r.split(",")[:2] for r in rows] == [["cotrain", "1"], ["finetune", "2"]]
    assert _zeros(out / rundir.CLASSIFIER)
    assert methods.get("robgan").held_out(methods.config_for("tiny", "robgan")) == 0


def test_a_guard_stop_between_validations_is_validated(tiny_data_dir, tmp_path, monkeypatch, capsys):
    # --val-every 2 would skip epoch 1, but the guard stops training there with the weights it kept: those are
    # validated (after the guard, not before it) and become the best epoch
    assert run(tiny_data_dir, tmp_path / "r", "--method", "fgsm-rs", "--val-every", "2") == 1
    assert "--val-every needs --val-examples" in capsys.readouterr().err and not (tmp_path / "r").exists()
    monkeypatch.setattr(methods, "OverfitGuard", FiringGuard)
    out = tmp_path / "fgsm-rs"
    assert run(tiny_data_dir, out, "--method", "fgsm-rs", "--epochs", "3", "--val-examples", "32",
               "--val-every", "2") == 0
    rows = rundir.read_metrics_rows(out)
    assert [(r["stage"], r["epoch"]) for r in rows] == [("train", "1")] and rows[0]["val_pgd10_acc"] != ""
    assert json.loads((out / rundir.BEST).read_text())["epoch"] == 1
    assert _zeros(out / rundir.CLASSIFIER), "the validated weights are the guard's, not the epoch's before it"


def test_generated_data_mixing_needs_and_uses_a_generator(tiny_data_dir, tmp_path, capsys):
    robgan_run = tmp_path / "robgan"
    assert run(tiny_data_dir, robgan_run, "--epochs", "1", "--finetune-epochs", "1", "--gen-ratio", "0.25") == 0
    assert run(tiny_data_dir, tmp_path / "a", "--method", "pgd-at", "--gen-ratio", "0.5") == 1
    assert "needs --generator" in capsys.readouterr().err
    out = tmp_path / "mixed"
    assert run(tiny_data_dir, out, "--method", "trades", "--epochs", "1", "--gen-ratio", "0.5",
               "--generator", str(robgan_run / rundir.GENERATOR)) == 0
    metrics = json.loads((out / rundir.METRICS_JSON).read_text())
    assert 0 <= metrics["gan_test_accuracy"] <= 1  # the mixed-in generator is scored too
