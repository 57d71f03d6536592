"""Generated data as a training source: the set on disk, its batches, the weight average, the
validation split and the plain conditional GAN that serves as the control."""

import json
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import train
from robgan_tf import averaging, data, losses, methods, models, rundir, synthetic
from robgan_tf.cli import sample

from conftest import TINY_TRAIN_ARGS, make_images


@pytest.fixture(scope="module")
def generator():
    keras.utils.set_random_seed(0)
    return models.build_generator((16, 16, 1), 4, width=4, z_dim=8)


def test_sampling_resumes_after_a_kill_without_duplicating_samples(generator, tmp_path, monkeypatch):
    whole = synthetic.write(generator, 40, str(tmp_path / "whole.npz"), seed=3, chunk=12, verbose=0)
    resumed = _killed_after_two_chunks_then_resumed(
        monkeypatch, lambda: synthetic.write(generator, 40, str(tmp_path / "resumed.npz"), seed=3, chunk=12,
                                             verbose=0))
    a, b = np.load(tmp_path / "whole.npz"), np.load(tmp_path / "resumed.npz")
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["y"], b["y"])
    assert np.bincount(b["y"]).tolist() == [10, 10, 10, 10]  # class-balanced, nothing twice
    assert len(np.unique(b["x"].reshape(40, -1), axis=0)) == 40
    assert resumed["candidates_drawn"] == whole["candidates_drawn"] == 48
    assert not (tmp_path / "resumed.npz.parts").exists()
    assert json.loads((tmp_path / "resumed.json").read_text())["per_class"] == 10


def _killed_after_two_chunks_then_resumed(monkeypatch, write):
    """write() killed (KeyboardInterrupt) as it saves its third chunk, then run again: its result."""
    calls, original = {"n": 0}, synthetic._save_atomic

    def killed_at_the_third_chunk(path, **arrays):
        if "chunk_" in path and not path.endswith(".tmp.npz"):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
        return original(path, **arrays)

    with monkeypatch.context() as patch:
        patch.setattr(synthetic, "_save_atomic", killed_at_the_third_chunk)
        with pytest.raises(KeyboardInterrupt):
            write()
    assert calls["n"] == 3
    return write()


def test_the_filter_keeps_only_confident_samples(generator, tmp_path):
    # a filter that reads class k's logit off one pixel of its own, centred on that pixel's median, so
    # that a third to a half of each class's candidates reach 0.25
    pixels = generate_flat(generator, 64)
    chosen = np.argsort(pixels.std(0))[-4:]
    kernel = np.zeros((256, 4), np.float32)
    kernel[chosen, np.arange(4)] = 20.0
    keep = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Flatten(), keras.layers.Dense(4)])
    keep.layers[-1].set_weights([kernel, -20.0 * np.median(pixels[:, chosen], 0)])
    meta = synthetic.write(generator, 8, str(tmp_path / "f.npz"), seed=0, chunk=16, keep=keep, threshold=0.25,
                           verbose=0)
    f = np.load(tmp_path / "f.npz")
    confidence = keras.ops.convert_to_numpy(keras.ops.softmax(keep.predict(f["x"] / 255.0, verbose=0)))
    assert (confidence[np.arange(8), f["y"]] >= 0.25 - 0.005).all()  # uint8 rounding moves it slightly
    assert (confidence.argmax(1) == f["y"]).all()  # and it is the filter's top class
    assert meta["kept_fraction"] < 1 and np.bincount(f["y"]).tolist() == [2, 2, 2, 2]
    with pytest.raises(synthetic.SampleError, match="lower the confidence threshold"):
        synthetic.write(generator, 8, str(tmp_path / "g.npz"), keep=keep, threshold=0.999, chunk=8, verbose=0,
                        max_chunks=3)


def test_a_filter_that_cannot_fill_a_class_is_refused_after_a_few_chunks(generator, tmp_path):
    only_0 = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Flatten(), keras.layers.Dense(
        4, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant([1.0, 0.0, 0.0, 0.0]))])
    with pytest.raises(synthetic.SampleError, match="passes as few as 0.0% of a class's candidates"):
        synthetic.write(generator, 40, str(tmp_path / "f.npz"), chunk=400, keep=only_0, verbose=0, max_chunks=20)
    assert len(list((tmp_path / "f.npz.parts").glob("chunk_*.npz"))) == 3  # not the 20 it was allowed


def test_once_a_class_is_full_the_filter_draws_only_the_classes_still_short(generator, tmp_path, monkeypatch):
    # fake samples that carry their label in one pixel; the judge reads it, and passes a class-3 sample only
    # when another pixel is >= 0.8 (a fifth of them): classes 0-2 fill in the first chunks, class 3 lags
    asked = []

    def labelled_noise(_, labels, seed):
        asked.append(np.bincount(labels, minlength=4))
        images = np.random.default_rng(seed).uniform(size=(len(labels), 16, 16, 1)).astype(np.float32)
        images[:, 0, 0, 0] = labels / 4 + 0.01
        return images

    class Judge:
        def predict(self, images, verbose=0):
            label = np.round((images[:, 0, 0, 0] - 0.01) * 4).astype(int)
            label[(label == 3) & (images[:, 1, 1, 0] < 0.8)] = 0
            return 5.0 * np.eye(4, dtype=np.float32)[label]

    monkeypatch.setattr(synthetic, "generate", labelled_noise)
    meta = synthetic.write(generator, 40, str(tmp_path / "f.npz"), seed=0, chunk=20, keep=Judge(), verbose=0)
    f = np.load(tmp_path / "f.npz")
    assert np.bincount(f["y"]).tolist() == [10] * 4
    assert (f["x"][f["y"] == 3][:, 1, 1, 0] >= 0.8 * 255 - 1).all()  # only class-3 samples the judge passed
    # two chunks of 5 a class fill classes 0-2; from then on a chunk asks for class 3 alone
    assert [a.tolist() for a in asked[:2]] == [[5, 5, 5, 5]] * 2
    assert all(a.tolist() == [0, 0, 0, 20] for a in asked[2:]) and meta["candidates_drawn"] == 20 * len(asked)
    # which classes a chunk asks for comes from the chunks on disk: a killed sampling resumes to the same set
    resumed = _killed_after_two_chunks_then_resumed(monkeypatch, lambda: synthetic.write(
        generator, 40, str(tmp_path / "r.npz"), seed=0, chunk=20, keep=Judge(), verbose=0))
    np.testing.assert_array_equal(np.load(tmp_path / "r.npz")["x"], f["x"])
    assert resumed["candidates_drawn"] == meta["candidates_drawn"]


def generate_flat(generator, n):
    from robgan_tf.quality import generate

    return generate(generator, np.arange(n) % 4, seed=1).reshape(n, -1)


def test_sample_cli_refuses_bad_input_before_writing(tmp_path, capsys):
    assert sample.main(["--generator", str(tmp_path / "none"), "--n", "8", "--out", str(tmp_path / "o.npz")]) == 1
    assert "--generator: no" in capsys.readouterr().err
    assert not (tmp_path / "o.npz.parts").exists()


def test_mixed_batches_take_the_asked_fraction_from_the_generated_set():
    x, y = make_images(200, seed=0)
    fake = (np.full((50, 16, 16, 1), 255, np.uint8), np.full(50, 3, np.uint8))
    mixed = data.MixedTrainData(x, y, fake, 20, fraction=0.7, smoothing=0.1, seed=1)
    assert (mixed.real_batch, mixed.fake_batch, mixed.steps) == (6, 14, 200 // 6)
    for images, labels, smoothing in mixed.epochs(0, 1).take(3):
        generated = np.all(images.numpy() == 1.0, axis=(1, 2, 3))
        assert generated.sum() == 14 and generated[6:].all()
        np.testing.assert_allclose(smoothing.numpy(), np.where(generated, 0.1, 0.0))
    with pytest.raises(data.DataError, match="synthetic-fraction"):
        data.MixedTrainData(x, y, fake, 4, fraction=0.9)


def test_label_smoothing_is_cross_entropy_against_the_smoothed_target():
    logits = tf.constant([[2.0, 0.0, -1.0]])
    target = 0.8 * np.eye(3)[0] + 0.2 / 3
    expected = -np.sum(target * tf.nn.log_softmax(logits).numpy()[0])
    assert float(losses.cross_entropy(tf.constant([0]), logits, 0.2)[0]) == pytest.approx(expected, rel=1e-6)


def test_the_validation_split_never_overlaps_the_training_images():
    x = (np.arange(300)[:, None, None, None] + np.zeros((1, 8, 8, 1))).astype(np.int64)  # every image unique
    y = np.arange(300) % 3
    (xv, yv), (xt, yt) = data.split_validation(x, y, 30, seed=2)
    assert len(yv) == 30 and np.bincount(yv).tolist() == [10, 10, 10]
    assert not set(xv[:, 0, 0, 0]) & set(xt[:, 0, 0, 0]) and len(yt) == 270
    # a run's split (trainer and study): --train-limit takes from what is left, stratified
    (xv2, _), (xs, ys) = data.run_split(types.SimpleNamespace(x_train=x, y_train=y), 30, 60, seed=2)
    np.testing.assert_array_equal(xv2, xv)
    assert len(ys) == 60 and np.bincount(ys).tolist() == [20, 20, 20]
    assert not set(xv[:, 0, 0, 0]) & set(xs[:, 0, 0, 0])


def test_the_weight_average_warms_up_and_follows_the_weights():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    average = averaging.WeightAverage(model, 0.9)
    start = [v.numpy().copy() for v in model.weights]
    model.weights[0].assign(model.weights[0] + 1.0)
    average.update()  # decay min(0.9, 1/10) = 0.1
    twin = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    average.copy_to(twin)
    np.testing.assert_allclose(twin.weights[0].numpy(), start[0] + 0.9, rtol=1e-6)
    assert float(averaging.warmed_up_decay(0.995, 10_000)) == pytest.approx(0.995)
    assert float(averaging.warmed_up_decay(0.995, 1000)) == pytest.approx(1001 / 1010)


def test_the_weight_average_averages_batch_norm_statistics_and_copies_other_state():
    inputs = keras.Input((2,))
    outputs = keras.layers.SpectralNormalization(keras.layers.Dense(2))(keras.layers.BatchNormalization()(inputs))
    model = keras.Model(inputs, outputs)
    mean = model.layers[1].moving_mean
    average = averaging.WeightAverage(model, 0.5)
    expected = mean.numpy()
    for t in range(5):  # the live statistic moves towards 3; the average follows it with decay_t
        model(np.full((4, 2), 3.0, np.float32), training=True)
        average.update()
        decay = float(averaging.warmed_up_decay(0.5, t))
        expected = decay * expected + (1 - decay) * mean.numpy()
    twin = keras.models.clone_model(model)
    average.copy_to(twin)
    copied = dict(zip((v.path for v in model.variables), twin.variables))
    np.testing.assert_allclose(copied[mean.path].numpy(), expected, rtol=1e-5)
    assert not np.allclose(expected, mean.numpy())  # the average, not the live statistic
    power_vector = model.layers[2].vector_u
    np.testing.assert_array_equal(copied[power_vector.path].numpy(), power_vector.numpy())  # copied as it is


def run(data_dir, out, *extra):
    return train.main(TINY_TRAIN_ARGS + ["--data-dir", str(data_dir), "--out", str(out), *extra])


def test_averaged_weights_are_the_ones_validated_saved_and_exported(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    fake = make_images(96, seed=7)
    np.savez(tmp_path / "gen.npz", x=fake[0], y=fake[1])
    assert run(tiny_data_dir, out, "--method", "pgd-at", "--epochs", "3", "--ema-decay", "0.9",
               "--val-examples", "32", "--val-every", "2", "--synthetic", str(tmp_path / "gen.npz")) == 0
    saved = keras.saving.load_model(out / rundir.CLASSIFIER)
    last = keras.saving.load_model(out / rundir.LAST_CLASSIFIER)
    raw = models.classifier_from(keras.saving.load_model(out / rundir.DISCRIMINATOR))
    best = json.loads((out / rundir.BEST).read_text())
    metrics = json.loads((out / rundir.METRICS_JSON).read_text())
    assert metrics["weights"] == "average" and metrics["best_epoch"]["epoch"] == best["epoch"]
    assert not all(np.allclose(a, b) for a, b in zip(last.get_weights(), raw.get_weights()))  # average != raw
    kept = keras.saving.load_model(out / rundir.BEST_CLASSIFIER)
    assert all(np.array_equal(a, b) for a, b in zip(saved.get_weights(), kept.get_weights()))
    validated = {int(r["epoch"]): float(r["val_pgd10_acc"]) for r in rundir.read_metrics_rows(out)
                 if r["val_pgd10_acc"]}
    assert sorted(validated) == [2, 3]  # every 2nd epoch and the last
    assert validated[best["epoch"]] == max(validated.values())
    assert (out / rundir.CURVES).is_file() and "best on the validation split" in capsys.readouterr().out


def test_synthetic_data_and_on_the_fly_mixing_are_refused_together(tiny_data_dir, tmp_path, capsys):
    assert run(tiny_data_dir, tmp_path / "r", "--method", "pgd-at", "--synthetic", "a.npz", "--gen-ratio", "0.3",
               "--generator", "g.keras") == 1
    assert "use one" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert run(tiny_data_dir, tmp_path / "r", "--method", "pgd-at", "--synthetic", str(tmp_path / "no.npz")) == 1
    assert "no such file" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_the_plain_conditional_gan_trains_on_clean_images(tiny_dataset):
    from robgan_tf.gan_training import ConditionalGAN

    x = tf.constant(tiny_dataset.x_train[:8] / 255.0, tf.float32)
    discriminator = models.build_discriminator((16, 16, 1), 4, 4, 2)
    model = ConditionalGAN(models.build_generator((16, 16, 1), 4, width=4, z_dim=8), discriminator,
                           models.classifier_from(discriminator), eps=0.3, pgd_steps=3)
    assert model.attack(x, tf.zeros(8, tf.int32), 0.3, tf.constant([0, 0], tf.int64)) is x
    config = methods.config_for("tiny", "cgan")
    assert config.finetune_epochs == 0 and [s.name for s in methods.get("cgan").stages] == ["cotrain"]
    with pytest.raises(methods.cfg.ConfigError, match="attacks no image"):
        methods.config_for("tiny", "cgan", {"pgd_steps": 3}, explicit={"pgd_steps": 3})


def test_the_curves_mark_the_epoch_kept_as_best(tmp_path, monkeypatch):
    import matplotlib.axes

    from robgan_tf import plots

    # epochs 1 and 2 tie on PGD-10; the kept one (best.json) is 2, the cleaner
    rows = [{"epoch": str(e), "adv_acc": "0.3", "val_clean_acc": c, "val_pgd10_acc": r}
            for e, c, r in ((1, "0.3", "0.2"), (2, "0.4", "0.2"), (3, "0.5", "0.1"))]
    marked = []
    monkeypatch.setattr(matplotlib.axes.Axes, "axvline", lambda self, x, **kwargs: marked.append(x))
    plots.training_curves(rows, tmp_path / "curves.png", best_epoch=2)
    assert marked == [2] and (tmp_path / "curves.png").is_file()
