"""An exponential moving average of a model's weights (Polyak averaging).

Gowal et al. 2021 evaluate the average of the classifier's weights, not the weights themselves:
it is more robust and overfits later. `WeightAverage` keeps the average in variables of its own,
updated inside the compiled train step and saved with the training checkpoint; `copy_to` puts
it into a model of the same architecture (the one that is validated, evaluated and exported).
"""

import tensorflow as tf


def warmed_up_decay(decay, updates):
    """decay_t = min(decay, (1 + t) / (10 + t)) after t updates: early weights are forgotten fast."""
    t = tf.cast(updates, tf.float32)
    return tf.minimum(decay, (1.0 + t) / (10.0 + t))


def is_moving_statistic(variable):
    """Whether `variable` is a batch normalisation's moving mean or variance."""
    return variable.path.rsplit("/", 1)[-1] in ("moving_mean", "moving_variance")


class WeightAverage(tf.Module):
    """avg ← decay_t·avg + (1 - decay_t)·w for every trainable variable w of `model` and every
    batch normalisation's moving statistic (averaged like the weights, as timm's ModelEma does,
    rather than the live model's latest; BigGAN instead recomputes them for the averaged
    weights); other non-trainable variables, such as spectral norm's power-iteration vectors,
    are copied as they are."""

    def __init__(self, model, decay, name="weight_average"):
        super().__init__(name=name)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.source = list(model.variables)
        self.averaged = [any(v is t for t in model.trainable_variables) or is_moving_statistic(v) for v in self.source]
        # Every replica holds the same weights, so every replica's update is the same: keep the first's.
        self.averages = [tf.Variable(tf.convert_to_tensor(v), trainable=False, name=f"average_{i}",
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                         for i, v in enumerate(self.source)]
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="updates",
                                   aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def update(self):
        """One averaging step, after an optimizer step of the model."""
        decay = warmed_up_decay(self.decay, self.updates)
        for average, variable, averaged in zip(self.averages, self.source, self.averaged):
            value = tf.cast(tf.convert_to_tensor(variable), average.dtype)
            average.assign(decay * average + (1.0 - decay) * value if averaged else value)
        self.updates.assign_add(1)

    def copy_to(self, model):
        """Sets `model` (the same architecture as the averaged one) to the averaged weights."""
        targets = list(model.variables)
        if [tuple(v.shape) for v in targets] != [tuple(a.shape) for a in self.averages]:
            raise ValueError(f"{model.name} does not have the averaged model's variables")
        for target, average in zip(targets, self.averages):
            target.assign(tf.convert_to_tensor(average))
