"""The epoch loop of one stage: resume mid-epoch, checkpoints, reports, guards, TensorBoard."""

import os

import keras

from robgan_tf import distribute, rundir
from robgan_tf.callbacks import EpochReport, NonFiniteGuard, StepCheckpoint

LOSSES = ("d_loss", "g_loss", "loss")  # the metrics NonFiniteGuard watches, where a stage has them


class StageRunner:
    """Runs a stage's remaining epochs with the run's callbacks; after a resume, a partly done
    epoch first finishes on its own, on the very batches it had left."""

    def __init__(self, strategy, progress, manager, save_models, class_names, out_dir, checkpoint_every,
                 columns, verbose, validation=None, score_every=1, sampler=None):
        self.strategy, self.progress, self.manager, self.save_models = strategy, progress, manager, save_models
        self.class_names, self.out_dir, self.columns = class_names, out_dir, columns
        self.checkpoint_every, self.verbose = checkpoint_every, verbose
        self.validation = validation  # ValidationCheck(stage, epoch_offset, stage_epochs), or None
        self.score_every = score_every
        self.sampler = sampler  # the generator to draw and score (G, or its weight average), or None

    def run(self, model, train_data, stage, epochs, epoch_offset, quality, extra_callbacks=()):
        """Trains `model` (a compiled train-step model) on `train_data` up to `epochs` epochs of
        this stage; `quality(generator)` scores G at each epoch end when given. An epoch's row and
        grid are written before its checkpoint, so a kill between them redoes the epoch's report; the
        stage's own callbacks (e.g. a guard that restores earlier weights) run before both."""
        guard = NonFiniteGuard([k for k in LOSSES if k in model.metric_names], self.out_dir)
        report = EpochReport(self.out_dir, stage, epoch_offset, self.sampler, quality, self.class_names,
                             self.columns, self.score_every, epochs)
        board = keras.callbacks.TensorBoard(os.path.join(self.out_dir, rundir.LOGS, stage))
        # the validation follows the stage's callbacks (a guard may restore earlier weights); its numbers go in the row
        validate = [self.validation(stage, epoch_offset, epochs)] if self.validation else []
        steps = train_data.steps

        def fit(first, last, skip=0):
            ckpt = StepCheckpoint(self.manager, self.progress, self.checkpoint_every, steps, self.save_models,
                                  batch_offset=skip)
            report.resumed_at = skip  # its row covers the batches from `skip` on: say so
            distribute.fit(self.strategy, model, train_data.epochs(first, last, skip), first, last, steps - skip,
                           [guard, *extra_callbacks, *validate, report, ckpt, board], self.verbose)

        epoch, done = int(self.progress.epoch.numpy()), int(self.progress.batch.numpy())
        if done and epoch < epochs:
            print(f"resuming {stage} epoch {epoch_offset + epoch + 1} at batch {done}/{steps}")
            fit(epoch, epoch + 1, skip=done)
            epoch += 1
        if epoch < epochs and not model.stop_training:
            fit(epoch, epochs)
