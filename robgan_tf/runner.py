"""One Rob-GAN run from settings to run directory: co-training, fine-tuning, final evaluation.

Resumable: the checkpoint records the stage, epoch and batch, so rerunning the same settings
after an interruption continues where the last checkpoint left off.
"""

import os
import time

import keras
import tensorflow as tf

from robgan_tf import data, evaluation, models, rundir
from robgan_tf.callbacks import EpochReport, NonFiniteGuard, StepCheckpoint
from robgan_tf.training import FineTuner, RobGAN

# Per-dataset defaults. MNIST is sized for a 2-core CPU; CIFAR-10 is the paper-scale model.
DEFAULTS = {
    "mnist": dict(eps=0.3, pgd_steps=10, width=32, g_width=32, depth=3, batch_size=64, epochs=3,
                  finetune_epochs=2, eps_warmup_epochs=1.0, d_lr=1e-3, g_lr=2e-4, finetune_lr=5e-4,
                  augment=False, real_rf_input="clean"),
    "cifar10": dict(eps=8 / 255, pgd_steps=7, width=128, g_width=256, depth=4, batch_size=64, epochs=100,
                    finetune_epochs=10, eps_warmup_epochs=5.0, d_lr=2e-4, g_lr=2e-4, finetune_lr=1e-4,
                    augment=True, real_rf_input="adversarial"),
}
COMMON = dict(pgd_step_size=None, lam=0.5, fake_class_weight=0.5, n_dis=1, beta_1=0.5, beta_2=0.999,
              spectral_norm="head", z_dim=128, train_limit=None, seed=0, eval_examples=1000,
              checkpoint_every=200, distribute="none", xla=False)


def default_config(dataset):
    """All settings for a dataset, its own defaults over the common ones (others take CIFAR-10's)."""
    return {**COMMON, **DEFAULTS.get(dataset, DEFAULTS["cifar10"])}


def make_strategy(name):
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    raise ValueError(f"unknown --distribute {name!r}: use none or mirrored")


def train(config, dataset, out_dir, overwrite=False, verbose="auto"):
    """Trains (or resumes, or just reports) the run in out_dir; returns the final metrics."""
    rundir.prepare(out_dir, config, overwrite)
    keras.utils.set_random_seed(config["seed"])
    x, y = data.subset(dataset.x_train, dataset.y_train, config["train_limit"], config["seed"])
    steps = len(y) // config["batch_size"]
    if steps == 0:
        raise ValueError(f"--batch-size {config['batch_size']} is larger than the {len(y)} training images")
    strategy = make_strategy(config["distribute"])
    with strategy.scope():
        generator = models.build_generator(dataset.image_shape, dataset.num_classes,
                                           config["g_width"], config["z_dim"])
        discriminator = models.build_discriminator(dataset.image_shape, dataset.num_classes,
                                                   config["width"], config["depth"], config["spectral_norm"])
        adam = lambda lr: keras.optimizers.Adam(lr, config["beta_1"], config["beta_2"])  # noqa: E731
        d_opt, g_opt = adam(config["d_lr"]), adam(config["g_lr"])
        # Fine-tuning anneals its learning rate to 0 (cosine) over the whole stage.
        ft_opt = adam(keras.optimizers.schedules.CosineDecay(
            config["finetune_lr"], max(1, steps * config["finetune_epochs"])))
        classifier = models.classifier_from(discriminator)
        d_opt.build(discriminator.trainable_variables)
        g_opt.build(generator.trainable_variables)
        ft_opt.build(classifier.trainable_variables)
        progress = rundir.Progress()
    manager = rundir.checkpoint_manager(out_dir, progress, generator=generator, discriminator=discriminator,
                                        d_optimizer=d_opt, g_optimizer=g_opt, ft_optimizer=ft_opt)
    if progress.stage_name == "done":
        print(f"{out_dir} is finished; nothing to train (use --overwrite to train it again).")
        return rundir.read_metrics_json(out_dir)

    def save_models():
        for model, name in ((generator, rundir.GENERATOR), (discriminator, rundir.DISCRIMINATOR),
                            (classifier, rundir.CLASSIFIER)):
            tmp = os.path.join(out_dir, "tmp_" + name)
            model.save(tmp)
            os.replace(tmp, os.path.join(out_dir, name))

    quality = evaluation.GeneratorQuality(dataset, _reference_classifier(dataset, out_dir, config["seed"]),
                                          seed=config["seed"])
    pipeline = data.train_pipeline(x, y, config["batch_size"], config["augment"], config["seed"])
    stage_args = dict(eps=config["eps"], pgd_steps=config["pgd_steps"], pgd_step_size=config["pgd_step_size"],
                      seed=config["seed"], attack_jit=config["xla"] and config["distribute"] != "none")
    jit = config["xla"] and config["distribute"] == "none"
    started = time.time()

    if progress.stage_name == "cotrain":
        with strategy.scope():
            model = RobGAN(generator, discriminator, fake_class_weight=config["fake_class_weight"],
                           n_dis=config["n_dis"], real_rf_input=config["real_rf_input"],
                           eps_warmup_steps=round(config["eps_warmup_epochs"] * steps),
                           **stage_args)
            model.compile(d_optimizer=d_opt, g_optimizer=g_opt, jit_compile=jit)
        _fit_stage(model, pipeline, steps, config["epochs"], 0, "cotrain", progress, manager, save_models,
                   quality, dataset, out_dir, config, verbose)
        progress.next_stage()
        manager.save()
    if progress.stage_name == "finetune":
        with strategy.scope():
            model = FineTuner(generator, discriminator, lam=config["lam"], **stage_args)
            model.compile(optimizer=ft_opt, jit_compile=jit)
        _fit_stage(model, pipeline, steps, config["finetune_epochs"], config["epochs"], "finetune", progress,
                   manager, save_models, quality, dataset, out_dir, config, verbose)

    save_models()
    metrics = final_metrics(classifier, generator, dataset, quality, config)
    metrics["train_seconds_this_session"] = round(time.time() - started, 1)
    rundir.write_metrics_json(out_dir, metrics)
    progress.next_stage()
    manager.save()
    print(f"clean accuracy {metrics['clean_accuracy']:.4f}, PGD-20 accuracy {metrics['pgd20_accuracy']:.4f} "
          f"(eps={config['eps']:.4g}, {metrics['eval_examples']} test images), GAN-test accuracy "
          f"{metrics['gan_test_accuracy']:.3f}, sample diversity {metrics['sample_diversity']:.2f} of real")
    warning = evaluation.collapse_warning(metrics)
    if warning:
        print(warning)
    return metrics


def _fit_stage(model, pipeline, steps, epochs, epoch_offset, stage, progress, manager, save_models,
               quality, dataset, out_dir, config, verbose):
    """Runs the stage's remaining epochs; a partly done epoch first finishes on its own."""
    guard = NonFiniteGuard([k for k in ("d_loss", "g_loss", "loss") if k in model.metric_names], out_dir)
    report = EpochReport(out_dir, stage, epoch_offset, model.generator, quality, dataset.class_names)
    tensorboard = keras.callbacks.TensorBoard(os.path.join(out_dir, rundir.LOGS, stage))
    epoch, done = int(progress.epoch.numpy()), int(progress.batch.numpy())
    if done and epoch < epochs:
        print(f"resuming {stage} epoch {epoch_offset + epoch + 1} at batch {done}/{steps}")
        ckpt = StepCheckpoint(manager, progress, config["checkpoint_every"], save_models, batch_offset=done)
        model.fit(pipeline.take(steps - done), initial_epoch=epoch, epochs=epoch + 1,
                  callbacks=[guard, report, ckpt, tensorboard], verbose=verbose)
        epoch += 1
    if epoch < epochs:
        ckpt = StepCheckpoint(manager, progress, config["checkpoint_every"], save_models)
        model.fit(pipeline, initial_epoch=epoch, epochs=epochs, callbacks=[guard, report, ckpt, tensorboard],
                  verbose=verbose)


def _reference_classifier(dataset, out_dir, seed):
    """The GAN-test classifier, trained once per run directory and kept there."""
    path = os.path.join(out_dir, rundir.REFERENCE_CLASSIFIER)
    if os.path.exists(path):
        return keras.saving.load_model(path)
    print("training the GAN-test reference classifier on real training images ...")
    model, acc = evaluation.train_reference_classifier(dataset, seed=seed)
    print(f"GAN-test reference classifier: {acc:.3f} accuracy on real test images")
    model.save(path)
    return model


def final_metrics(classifier, generator, dataset, quality, config):
    """Clean and PGD-20 accuracy on a stratified test subset, and generator quality."""
    x, y = data.subset(dataset.x_test, dataset.y_test, config["eval_examples"], config["seed"])
    eps = config["eps"]
    return {
        "clean_accuracy": evaluation.accuracy(classifier, x, y),
        "pgd20_accuracy": evaluation.pgd_accuracy(classifier, x, y, eps, steps=20, seed=config["seed"]),
        "eps": eps,
        "eval_examples": len(y),
        "eval_split": "test",
        "pgd": {"steps": 20, "step_size": 2.5 * eps / 20, "restarts": 1, "random_start": True,
                "loss": "cross-entropy"},
        **quality(generator),
    }
