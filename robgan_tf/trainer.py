"""One training run, from settings to run directory: the method's stages in order, then the
final evaluation on the test split.

Resumable: the checkpoint records the stage, epoch and batch, so rerunning the same settings
after an interruption continues where the last checkpoint left off.
"""

import functools
import os
import time

import keras

from robgan_tf import data, distribute, evaluation, methods, models, quality, recipes, rundir
from robgan_tf.attacks import default_step_size
from robgan_tf.averaging import WeightAverage
from robgan_tf.callbacks import ValidationCheck
from robgan_tf.config import AttackSettings
from robgan_tf.loop import StageRunner


VALIDATION_COLUMNS = ("val_clean_acc", "val_pgd10_acc")  # metrics.csv's, with a validation split


def train(config, dataset, out_dir, overwrite=False, verbose="auto", after_stage=None):
    """Trains (or resumes, or just reports) the run of `config` on `dataset` in out_dir and
    returns the final metrics. `after_stage(stage_name, checkpoint_manager)`, when given, is
    called once a stage's last checkpoint is written."""
    method = methods.get(config.method)
    if overwrite and config.distribute == "multiworker":  # the chief's rmtree would race the workers
        raise rundir.RunDirError("--overwrite with --distribute multiworker: remove the run directory first")
    strategy = distribute.make_strategy(config.distribute)  # first: multi-worker needs it before other TF ops
    validation, (x, y) = data.run_split(dataset, config.val_examples, config.train_limit, config.seed)
    n_out = method.held_out(config)  # e.g. FGSM-RS's batch for its catastrophic-overfitting check
    held_out, x, y = ((x[:n_out], y[:n_out]) if n_out else None), x[n_out:], y[n_out:]
    check_batch = held_out or (x[:config.batch_size], y[:config.batch_size])  # what a stage's guard checks
    synthetic = data.load_synthetic(config.synthetic, dataset) if config.synthetic else None
    stage_data = []
    for stage in method.stages:
        batch = config.batch_size * stage.batches_per_step(config)
        if len(y) < batch:
            raise data.DataError(f"{len(y)} training images cannot fill one step of {batch} images (--batch-size "
                                 f"{config.batch_size} x {batch // config.batch_size} batches per step); lower "
                                 f"--batch-size or raise --train-limit")
        if synthetic is not None and stage.synthetic:
            stage_data.append(data.MixedTrainData(x, y, synthetic, batch, config.synthetic_fraction,
                                                  config.synthetic_smoothing, config.augment, config.seed))
        else:
            stage_data.append(data.TrainData(x, y, batch, config.augment, config.seed))
    own_dir = distribute.worker_dir(strategy, out_dir)
    rundir.prepare(own_dir, config, dataset.class_names, overwrite, normalise=methods.normalise,
                   data=dataset.identity())
    print(f"computing in {config.mixed_precision.replace('none', 'float32')}; bfloat16 hardware: "
          f"{distribute.bf16_hardware() or 'none found'}")
    keras.utils.set_random_seed(config.seed)
    steps = {stage.name: d.steps * stage.epochs(config) for stage, d in zip(method.stages, stage_data)}
    with strategy.scope(), distribute.dtype_policy(config.mixed_precision):
        parts = build_parts(config, dataset, method)
        optimizers = method.optimizers(config, parts, steps)
    progress = rundir.Progress()
    trained = {"discriminator": parts.discriminator, **({"generator": parts.generator}
                                                        if method.trains_generator else {}),
               **({"average": parts.average} if parts.average is not None else {}),
               **({"generator_average": parts.generator_average} if parts.generator_average is not None else {})}
    manager = rundir.checkpoint_manager(own_dir, progress, restore_from=out_dir, **trained, **optimizers)

    def save_models():
        named = [(parts.discriminator, rundir.DISCRIMINATOR), (parts.keep(), rundir.CLASSIFIER)]
        for model, name in named + ([(parts.sampler(), rundir.GENERATOR)] if parts.generator is not None else []):
            rundir.save_model(model, own_dir, name)

    if progress.stage_index >= len(method.stages) and os.path.exists(os.path.join(own_dir, rundir.METRICS_JSON)):
        files = (rundir.DISCRIMINATOR, rundir.CLASSIFIER, *([rundir.GENERATOR] if parts.generator is not None else []))
        missing = [name for name in files if not os.path.exists(os.path.join(own_dir, name))]
        if missing:  # deleted since: the checkpoint still has them
            save_models()
            keep_best(parts, own_dir)
            print(f"rewrote {', '.join(missing)} from the checkpoint")
        print(f"{out_dir} is finished; nothing to train (use --overwrite to train it again).")
        return rundir.read_metrics_json(own_dir)

    scorer, scores = None, {}
    if parts.generator is not None:
        scorer = quality.GeneratorQuality(dataset, reference_classifier(dataset, own_dir, config.seed),
                                          seed=config.seed, train_images=(x, y))
        print(f"GAN-test reference classifier: {scorer.reference_accuracy:.3f} accuracy on real test images")

    def frozen_scores(_=None):
        """G's scores once it no longer changes (computed once)."""
        if scorer is not None and not scores:
            scores.update(scorer(parts.sampler()))
        return scores

    columns = method.metric_columns() + (VALIDATION_COLUMNS if config.val_examples else ())
    validate = (functools.partial(ValidationCheck, parts.kept or parts.classifier, parts.keep, *validation,
                                  config.eps, own_dir, seed=config.seed, every=config.val_every)
                if config.val_examples else None)
    runner = StageRunner(strategy, progress, manager, save_models, dataset.class_names, own_dir,
                         config.checkpoint_every, columns, verbose, validate, config.score_every, parts.sampler)
    started = time.time()
    while progress.stage_index < len(method.stages):
        index = progress.stage_index
        stage, stage_steps = method.stages[index], stage_data[index]
        stopped = rundir.read_early_stop(own_dir)  # a guard that stopped this stage just before a crash
        if not (stopped and stopped.get("stage", method.stages[0].name) == stage.name):
            epochs = stage.epochs(config)
            warmup = round(min(config.eps_warmup_epochs, epochs) * stage_steps.steps * stage.batches_per_step(config))
            with strategy.scope():
                model = stage.model(parts, optimizers, config, warmup if stage.warms_up else 0)
            score = {"trained": scorer, "frozen": frozen_scores}.get(stage.generator)
            offset = sum(s.epochs(config) for s in method.stages[:index])
            context = recipes.StageContext(config, own_dir, check_batch, stage.name)
            runner.run(model, stage_steps, stage.name, epochs, offset, score, stage.callbacks(context))
        progress.next_stage()
        manager.save()
        if after_stage is not None:
            after_stage(stage.name, manager)

    save_models()
    kept = keep_best(parts, own_dir)
    metrics = final_metrics(kept, dataset, config, frozen_scores())
    early_stop = rundir.read_early_stop(own_dir)
    best = rundir.read_best(own_dir)
    metrics.update(method=config.method, train_seconds_this_session=round(time.time() - started, 1),
                   **({"early_stop": early_stop} if early_stop else {}), **({"best_epoch": best} if best else {}),
                   weights="average" if parts.average is not None else "trained")
    rundir.write_metrics_json(own_dir, metrics)
    gan = f", {quality.describe(metrics)}" if scores else ""
    print(f"clean accuracy {metrics['clean_accuracy']:.4f}, PGD-20 accuracy {metrics['pgd20_accuracy']:.4f} "
          f"(eps={config.eps:.4g}, {metrics['eval_examples']} test images){gan}")
    warning = (quality.collapse_warning(metrics) or quality.conditioning_note(metrics)) if scores else None
    if warning:
        print(warning)
    return metrics


def build_parts(config, dataset, method):
    """The models of a run, built once (inside the strategy's scope and dtype policy): D, its
    classifier, G (trained by the method, or a baseline's frozen --generator, or None), and with
    --ema-decay the classifier's weight average and a classifier of its own to hold it (with
    --g-ema-decay, the same for G)."""
    # Spectral norm is a GAN setting: a baseline's D has it on the real/fake head only (methods.py
    # fixes it), so that runs made before stay loadable.
    def classifier():
        discriminator = models.build_discriminator(dataset.image_shape, dataset.num_classes, config.width,
                                                   config.depth, config.spectral_norm, config.projection)
        return discriminator, models.classifier_from(discriminator)

    discriminator, trained = classifier()
    generator, generator_average, sampled = None, None, None
    if method.trains_generator:
        def build_generator():
            return models.build_generator(dataset.image_shape, dataset.num_classes, config.g_width, config.z_dim)
        generator = build_generator()
        if config.g_ema_decay:
            generator_average, sampled = WeightAverage(generator, config.g_ema_decay), build_generator()
    elif config.gen_ratio:
        generator = frozen_generator(config.generator, dataset)
    average, kept = (WeightAverage(trained, config.ema_decay), classifier()[1]) if config.ema_decay else (None, None)
    return recipes.Parts(generator, discriminator, trained, average, kept, generator_average, sampled)


def keep_best(parts, out_dir):
    """At the end of training: the classifier to evaluate and export. With a validation split, the
    best epoch's (classifier.keras; the last epoch's is kept as classifier_last.keras), else the last."""
    kept, best = parts.keep(), rundir.read_best(out_dir)
    if best is None:
        return kept
    rundir.save_model(kept, out_dir, rundir.LAST_CLASSIFIER)
    kept.set_weights(rundir.load_model(os.path.join(out_dir, rundir.BEST_CLASSIFIER)).get_weights())
    rundir.save_model(kept, out_dir, rundir.CLASSIFIER)
    print(f"{rundir.CLASSIFIER} is epoch {best['epoch']}'s, the best on the validation split (PGD-10 accuracy "
          f"{best['val_pgd10_acc']:.3f}); the last epoch's is {rundir.LAST_CLASSIFIER}")
    return kept


def frozen_generator(path, dataset):
    """A trained generator.keras whose samples a baseline mixes into its batches."""
    if not os.path.isfile(path):
        raise data.DataError(f"--generator {path}: no such file (a generator.keras from a Rob-GAN run)")
    generator = rundir.load_model(path)
    if tuple(generator.output.shape[1:]) != dataset.image_shape:
        raise data.DataError(f"--generator {path} makes {tuple(generator.output.shape[1:])} images, "
                             f"not {dataset.name}'s {dataset.image_shape}")
    generator.trainable = False
    return generator


def reference_classifier(dataset, out_dir, seed):
    """The GAN-test classifier, trained once per run directory and kept there."""
    path = os.path.join(out_dir, rundir.REFERENCE_CLASSIFIER)
    if os.path.exists(path):
        return rundir.load_model(path)
    print("training the GAN-test reference classifier on real training images ...")
    model = quality.train_reference_classifier(dataset, seed=seed)
    rundir.save_model(model, out_dir, rundir.REFERENCE_CLASSIFIER)
    return model


def final_metrics(classifier, dataset, config, generator_scores):
    """Clean and PGD-20 accuracy on a stratified test subset, with the generator's quality scores."""
    x, y = data.subset(dataset.x_test, dataset.y_test, config.eval_examples, config.seed)
    logits_fn = evaluation.inference_fn(models.float32_copy(classifier))  # attacks in float32
    settings = AttackSettings(seed=config.seed)  # PGD-20, one restart
    attack = evaluation.PGD(settings.pgd_steps, settings.pgd_restarts)
    result = evaluation.evaluate(logits_fn, x, y, [config.eps], attack, settings=settings, verbose=False)
    return {
        "clean_accuracy": result["clean_accuracy"],
        "pgd20_accuracy": result["robust_accuracy"][attack.name][evaluation.eps_key(config.eps)],
        "eps": config.eps,
        "eval_examples": len(y),
        "eval_split": "test",
        "pgd": {"steps": attack.steps, "step_size": default_step_size(config.eps, attack.steps),
                "restarts": attack.restarts, "random_start": True, "loss": "cross-entropy"},
        **generator_scores,
    }
