"""Learning-rate schedules the methods use beside Keras' own (cosine decay)."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable("robgan_tf")
class CyclicLR(keras.optimizers.schedules.LearningRateSchedule):
    """Triangular one-cycle learning rate (Wong et al. 2020): 0 up to `peak` at 2/5 of
    training, back to 0 at the end."""

    def __init__(self, peak, total_steps):
        self.peak, self.total_steps = float(peak), int(total_steps)

    def __call__(self, step):
        t, top = tf.cast(step, tf.float32), 0.4 * self.total_steps
        return self.peak * tf.maximum(0.0, tf.minimum(t / top, (self.total_steps - t) / (self.total_steps - top)))

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps}
