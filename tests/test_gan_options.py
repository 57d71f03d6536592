"""The options that make G a better source of data: DiffAugment, the hinge loss, G's class weight,
the projection head and G's weight average."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import train
from robgan_tf import diffaugment, losses, methods, models, rundir, trainer
from robgan_tf.gan_training import RobGAN

from conftest import TINY_TRAIN_ARGS

SEED = tf.constant([3, 4], tf.int64)


def test_diffaugment_is_differentiable_so_g_gets_gradients_through_it():
    generator = models.build_generator((16, 16, 1), 4, width=4, z_dim=8)
    z, y = tf.random.normal((6, 8)), tf.constant([0, 1, 2, 3, 0, 1])
    with tf.GradientTape() as tape:
        images = diffaugment.augment(generator([z, y], training=True), SEED, diffaugment.POLICIES)
        loss = tf.reduce_sum(images ** 2)
    grads = tape.gradient(loss, generator.trainable_variables)
    assert all(g is not None for g in grads) and sum(float(tf.reduce_sum(tf.abs(g))) for g in grads) > 0


def test_diffaugment_transforms_real_and_fake_alike_within_a_step_and_changes_them():
    x = tf.random.uniform((8, 16, 16, 3), seed=1)
    same = [diffaugment.augment(x, SEED, diffaugment.POLICIES) for _ in range(2)]
    np.testing.assert_array_equal(same[0].numpy(), same[1].numpy())  # one seed, one set of transforms
    other = diffaugment.augment(x, SEED + 1, diffaugment.POLICIES)
    assert not np.allclose(same[0].numpy(), other.numpy()) and not np.allclose(same[0].numpy(), x.numpy())
    ones = tf.ones((64, 16, 16, 1))
    cut = diffaugment.cutout(ones, SEED).numpy()
    kept = cut.reshape(64, -1).sum(1)  # a square of half the side, centred anywhere (clipped at the border)
    assert kept.min() >= 256 - 8 * 8 and kept.max() <= 256 - 4 * 4 and len(set(kept)) > 1
    moved = diffaugment.translation(ones, SEED).numpy()
    assert moved.min() == 0.0 and (moved.reshape(64, -1).sum(1) >= 256 - 2 * 2 * 16).all()  # at most 2 px each way
    assert diffaugment.augment(x, SEED, ()) is x
    with pytest.raises(methods.cfg.ConfigError, match="unknown DiffAugment"):
        methods.config_for("tiny", "robgan", {"diffaugment": "color,zoom"})


def test_hinge_losses_are_their_equations():
    real, fake = tf.constant([[2.0], [0.5]]), tf.constant([[-3.0], [0.25]])
    np.testing.assert_allclose(losses.real_fake_loss(real, fake, "hinge").numpy(), [0.0, 0.5 + 1.25])
    np.testing.assert_allclose(losses.fooling_loss(fake, "hinge").numpy(), [3.0, -0.25])
    bce = losses.real_fake_loss(real, fake).numpy()
    np.testing.assert_allclose(bce, np.log1p(np.exp(-np.array([2.0, 0.5]))) + np.log1p(np.exp([-3.0, 0.25])),
                               rtol=1e-6)


def test_g_class_weight_scales_the_class_term_only():
    labels, cls, rf = tf.constant([1]), tf.constant([[0.3, -0.2]]), tf.constant([[0.7]])
    full, half, none = (float(losses.robgan_generator_loss(labels, cls, rf, w)[0]) for w in (1.0, 0.5, 0.0))
    assert full - half == pytest.approx(half - none) and none == pytest.approx(float(losses.fooling_loss(rf)[0]))


def test_robgan_step_with_hinge_and_diffaugment_updates_both_models(tiny_dataset):
    discriminator = models.build_discriminator((16, 16, 1), 4, width=4, depth=2, spectral_norm="all")
    generator = models.build_generator((16, 16, 1), 4, width=4, z_dim=8)
    model = RobGAN(generator, discriminator, models.classifier_from(discriminator), eps=0.1, pgd_steps=1,
                   gan_loss="hinge", g_class_weight=0.5, diffaugment=diffaugment.POLICIES)
    model.compile(d_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-3))
    before = [v.numpy().copy() for v in generator.trainable_variables + discriminator.trainable_variables]
    x = tf.constant(tiny_dataset.x_train[:8] / 255.0, tf.float32)
    logs = model.train_step((x, tf.constant(tiny_dataset.y_train[:8])))
    after = [v.numpy() for v in generator.trainable_variables + discriminator.trainable_variables]
    assert all(np.isfinite(float(v)) for v in logs.values())
    changed = [not np.array_equal(a, b) for a, b in zip(before, after)]
    assert any(changed[:len(generator.trainable_variables)]) and any(changed[len(generator.trainable_variables):])


def test_diffaugment_and_its_gradient_compile_with_xla():
    x = tf.random.uniform((4, 16, 16, 3), seed=2)

    @tf.function(jit_compile=True)
    def grad(images):
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = tf.reduce_sum(diffaugment.augment(images, SEED, diffaugment.POLICIES) ** 2)
        return tape.gradient(loss, images)

    compiled = grad(x).numpy()  # (XLA may draw other random numbers than the CPU kernels: compare shapes only)
    assert compiled.shape == x.shape and np.isfinite(compiled).all() and np.abs(compiled).sum() > 0
    np.testing.assert_array_equal(compiled, grad(x).numpy())  # one seed, one result


def test_the_projection_head_uses_the_label_and_is_trained(tiny_dataset):
    discriminator = models.build_discriminator((16, 16, 1), 4, width=4, depth=2, spectral_norm="all",
                                               projection=True)
    x = tf.constant(tiny_dataset.x_train[:8] / 255.0, tf.float32)
    y = tf.constant(tiny_dataset.y_train[:8].astype(np.int32))
    one, other = discriminator([x, y]), discriminator([x, (y + 1) % 4])
    assert not np.allclose(one["adv"].numpy(), other["adv"].numpy())  # the real/fake logit reads the label
    np.testing.assert_array_equal(one["cls"].numpy(), other["cls"].numpy())  # the class logits do not
    classifier = models.classifier_from(discriminator)
    np.testing.assert_allclose(classifier(x).numpy(), one["cls"].numpy(), rtol=1e-6)  # images in, logits out
    # a co-training step moves the label embedding
    generator = models.build_generator((16, 16, 1), 4, width=4, z_dim=8)
    model = RobGAN(generator, discriminator, classifier, eps=0.1, pgd_steps=1, gan_loss="hinge")
    model.compile(d_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-3))
    embedding = discriminator.get_layer("projection").trainable_variables
    before = [v.numpy().copy() for v in embedding]
    model.train_step((x, y))
    assert embedding and all(not np.array_equal(b, v.numpy()) for b, v in zip(before, embedding))


def test_the_generator_average_draws_scores_and_is_saved(tiny_data_dir, tiny_dataset, tmp_path):
    out = tmp_path / "run"
    assert train.main(TINY_TRAIN_ARGS + ["--data-dir", str(tiny_data_dir), "--out", str(out), "--epochs", "2",
                                         "--finetune-epochs", "1", "--projection", "--g-ema-decay", "0.9"]) == 0
    # the run's models as the checkpoint holds them: G, and G's average
    config = rundir.read_config(str(out))[0]
    parts = trainer.build_parts(config, tiny_dataset, methods.get("robgan"))
    tf.train.Checkpoint(generator=parts.generator, generator_average=parts.generator_average).restore(
        tf.train.latest_checkpoint(str(out / rundir.CHECKPOINTS))).expect_partial()
    sampled = parts.sampler()
    saved = keras.saving.load_model(out / rundir.GENERATOR).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(saved, sampled.get_weights()))  # generator.keras: the average
    assert not all(np.allclose(a, b) for a, b in zip(saved, parts.generator.get_weights()))  # not G itself
    # fine-tuning draws its fakes from the average
    stage = methods.get("robgan").stages[1]
    optimizers = methods.get("robgan").optimizers(config, parts, {"finetune": 1})
    assert stage.model(parts, optimizers, config).generator is sampled
    assert (out / rundir.SAMPLES / "epoch_003.png").is_file()
