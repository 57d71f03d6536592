"""Keras callbacks that keep a run safe and visible: NaN guard, checkpoints, epoch reports."""

import glob
import math
import os
import time

import keras
import numpy as np

from robgan_tf import data, evaluation, models, rundir
from robgan_tf.config import AttackSettings
from robgan_tf.quality import COLUMNS, collapse_warning, conditioning_note, describe
from robgan_tf.plots import sample_grid, training_curves


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss, before anything is checkpointed."""

    def __init__(self, keys, out_dir):
        super().__init__()
        self.keys, self.out_dir = keys, out_dir

    def on_train_batch_end(self, batch, logs=None):
        for key in self.keys:
            value = float(np.asarray((logs or {}).get(key, 0.0)))
            if not math.isfinite(value):
                checkpoints = os.path.join(self.out_dir, rundir.CHECKPOINTS)
                kept = (f"the last good checkpoint in {checkpoints} is kept and rerunning the same command resumes "
                        f"from it; if it happens again, lower the learning rates (e.g. --d-lr) and add --overwrite "
                        f"(other settings start the run over)") if glob.glob(os.path.join(checkpoints, "*.index")) \
                    else ("no checkpoint had been written yet; lower the learning rates (e.g. --d-lr) and rerun "
                          "with --overwrite")
                raise TrainingDiverged(f"{key} became {value} at batch {batch}; training stopped: {kept}")


class StepCheckpoint(keras.callbacks.Callback):
    """Saves the training checkpoint every `every` batches and at each epoch end, with the models.

    The last batch of an epoch is saved by the epoch end only, so a checkpoint taken mid-epoch
    always has batches left to run.
    """

    def __init__(self, manager, progress, every, steps, save_models, batch_offset=0):
        super().__init__()
        self.manager, self.progress, self.every, self.steps = manager, progress, every, steps
        self.save_models, self.batch_offset = save_models, batch_offset

    def on_epoch_begin(self, epoch, logs=None):
        self.progress.epoch.assign(epoch)

    def on_train_batch_end(self, batch, logs=None):
        done = self.batch_offset + batch + 1
        self.progress.batch.assign(done)
        if self.every and done % self.every == 0 and done < self.steps:
            self.manager.save()

    def on_epoch_end(self, epoch, logs=None):
        self.batch_offset = 0
        self.progress.epoch.assign(epoch + 1)
        self.progress.batch.assign(0)
        self.save_models()
        self.manager.save()


class EpochReport(keras.callbacks.Callback):
    """At each epoch end: one row of metrics.csv and, when there is a `quality` scorer, a sample
    grid and the quality (`quality(generator)`, with a loud collapse warning) of `sampler()`, the
    generator to draw from (G, or G's weight average), which also
    go to the epoch logs, every `score_every` epochs and at the last. The row holds every metric
    the stage declares (`columns` must have them)."""

    def __init__(self, out_dir, stage, epoch_offset, sampler, quality, class_names, columns, score_every=1,
                 stage_epochs=None):
        super().__init__()
        self.out_dir, self.stage, self.epoch_offset = out_dir, stage, epoch_offset
        self.sampler, self.quality, self.class_names, self.columns = sampler, quality, class_names, columns
        self.score_every, self.stage_epochs = score_every, stage_epochs
        self.resumed_at = 0  # the batch the next epoch resumes at (set by loop.StageRunner), or 0

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        number = self.epoch_offset + epoch + 1
        logs = logs if logs is not None else {}
        row = {k: float(np.asarray(v)) for k, v in logs.items()}  # the stage's metrics: all of them
        if self.quality is not None and (number % self.score_every == 0 or epoch + 1 == self.stage_epochs):
            generator = self.sampler()
            sample_grid(generator, self.class_names,
                        os.path.join(self.out_dir, rundir.SAMPLES, f"epoch_{number:03d}.png"),
                        title=f"{self.stage} epoch {number}")
            quality = self.quality(generator)
            print(f"\nepoch {number} ({self.stage}): {describe(quality)}")
            warning, note = collapse_warning(quality), conditioning_note(quality)
            if warning:
                print("!" * 78 + f"\n{warning}\n" + "!" * 78)
            elif note:
                print(note)
            logs.update(quality)
            row.update({k: quality[k] for k in COLUMNS})
        row.update(stage=self.stage, epoch=number, seconds=round(time.time() - self.start, 1),
                   **({"resumed_at_batch": self.resumed_at} if self.resumed_at else {}))
        self.resumed_at = 0
        rundir.write_metrics_row(self.out_dir, row, self.columns)
        if "val_pgd10_acc" in row:  # robust overfitting, made visible
            training_curves(rundir.read_metrics_rows(self.out_dir), os.path.join(self.out_dir, rundir.CURVES),
                            (rundir.read_best(self.out_dir) or {}).get("epoch"))


class _RobustAccuracy:
    """Clean and PGD-10 accuracy of `model`'s current weights on fixed examples, attacked in
    float32 as in evaluation (float16 input gradients underflow)."""

    def __init__(self, model, x, y, eps, seed):
        self.model, self.eps, self.seed = model, eps, seed
        self.x, self.y = data.to_float(x).numpy(), np.asarray(y, np.int32)
        self.attacked = self.evaluator = None

    def __call__(self):
        if self.evaluator is None:  # built at the first check: it traces the attack once
            self.attacked = models.float32_copy(self.model)
            self.evaluator = evaluation.Evaluator(evaluation.inference_fn(self.attacked),
                                                  AttackSettings(seed=self.seed), verbose=False)
        if self.attacked is not self.model:
            self.attacked.set_weights(self.model.get_weights())
        correct = self.evaluator.predict(self.x) == self.y
        robust = self.evaluator.run(evaluation.PGD(10), self.x, self.y, self.eps, correct)[0]
        return float(correct.mean()), float(robust.mean())


class ValidationCheck(keras.callbacks.Callback):
    """Every `every` epochs and at the stage's end (its last epoch, `stage_epochs`, or an epoch
    where a callback before this one stopped training, e.g. a guard that restored earlier
    weights), before the row and the checkpoint: clean and PGD-10 accuracy of the kept classifier
    (`prepare()` first sets its weights, e.g. to their average) on the validation split, which no
    step trains on, into the epoch's logs (so metrics.csv and TensorBoard); the best epoch checked,
    by PGD-10 accuracy (then clean accuracy), is saved as classifier_best.keras with best.json."""

    def __init__(self, kept, prepare, x, y, eps, out_dir, stage, epoch_offset, stage_epochs, seed=0, every=1):
        super().__init__()
        self.kept, self.prepare, self.check = kept, prepare, _RobustAccuracy(kept, x, y, eps, seed)
        self.out_dir, self.stage, self.epoch_offset = out_dir, stage, epoch_offset
        self.stage_epochs, self.every = stage_epochs, every

    def on_epoch_end(self, epoch, logs=None):
        number = self.epoch_offset + epoch + 1
        if number % self.every and epoch + 1 != self.stage_epochs and not self.model.stop_training:
            return
        self.prepare()
        clean, robust = self.check()
        if logs is not None:
            logs.update(val_clean_acc=clean, val_pgd10_acc=robust)
        best = rundir.read_best(self.out_dir)
        if best is None or (robust, clean) > (best["val_pgd10_acc"], best["val_clean_acc"]):  # ties: the cleaner
            rundir.save_model(self.kept, self.out_dir, rundir.BEST_CLASSIFIER)
            rundir.write_best(self.out_dir, {"epoch": number, "stage": self.stage,
                                             "val_pgd10_acc": robust, "val_clean_acc": clean})


class OverfitGuard(keras.callbacks.Callback):
    """The catastrophic-overfitting guard of Wong et al. 2020: at the start of training and at
    each epoch end, PGD-10 accuracy at the target eps on a training batch (held out, or the
    first); when it falls by more than `drop` from the previous check, training stops and the
    classifier (and its weight average) gets the previous check's weights back. `record(fired)`
    keeps the event (e.g. on disk) at the end of training, after the epoch's checkpoint has saved
    the restored weights. The first check of a process is where it starts or resumes;
    `fired["epoch"]` counts the stage's epochs. Each epoch's check goes to its logs (COLUMNS)."""

    COLUMNS = ("guard_pgd10_acc",)

    def __init__(self, x, y, eps, seed=0, drop=0.2, record=None):
        super().__init__()
        self.record, self.x, self.y, self.eps, self.seed, self.drop = record, x, y, eps, seed, drop
        self.previous = self.good_weights = self.fired = self.check = None

    def _averages(self):
        average = self.model.average
        return average.averages if average is not None else []

    def _weights(self):
        return self.model.classifier.get_weights(), [a.numpy() for a in self._averages()]

    def _restore(self, weights):
        classifier_weights, average_weights = weights
        self.model.classifier.set_weights(classifier_weights)
        for variable, value in zip(self._averages(), average_weights):
            variable.assign(value)

    def on_train_begin(self, logs=None):
        if self.previous is not None:  # a resumed epoch's second fit in the same process
            return
        if self.check is None:
            self.check = _RobustAccuracy(self.model.classifier, self.x, self.y, self.eps, self.seed)
        self.previous, self.good_weights = self.check()[1], self._weights()

    def on_epoch_end(self, epoch, logs=None):
        robust = self.check()[1]
        if logs is not None:
            logs.update(guard_pgd10_acc=robust)
        if robust >= self.previous - self.drop:
            self.previous, self.good_weights = robust, self._weights()
            return
        self.fired = {"epoch": epoch + 1, "step": int(self.model.steps_done), "pgd10_accuracy": float(robust),
                      "previous": float(self.previous)}
        print(f"\ncatastrophic overfitting: PGD-10 accuracy on the guard's training batch fell from "
              f"{self.previous:.2f} to {robust:.2f} in epoch {epoch + 1}; stopping with the weights of "
              f"the check before")
        self._restore(self.good_weights)
        self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.fired is not None and self.record is not None:
            self.record(self.fired)
