"""bench/step_speed.py's model FLOP count, against hand counts."""

import os
import sys

import keras
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

from step_speed import per_image_flops, step_flops  # noqa: E402


def test_per_image_flops_counts_convolutions_and_matrix_products_from_their_shapes():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, padding="same"),
                              keras.layers.Conv2D(6, 1, strides=2), keras.layers.Flatten(), keras.layers.Dense(10)])
    by_hand = (2 * 8 * 8 * 4 * (3 * 3 * 3)  # 3x3 conv, 3 -> 4 channels, at 8x8
               + 2 * 4 * 4 * 6 * (1 * 1 * 4)  # 1x1 conv, 4 -> 6 channels, stride 2: at 4x4
               + 2 * 10 * (4 * 4 * 6))  # dense, 96 -> 10
    assert per_image_flops(model, lambda n: [tf.TensorSpec((n, 8, 8, 3))]) == by_hand


class _ProductKernel(keras.layers.Layer):
    """x @ (a @ b): a matrix product of weights alone, then one per image."""

    def build(self, input_shape):
        self.a = self.add_weight(shape=(input_shape[-1], 5))
        self.b = self.add_weight(shape=(5, 7))

    def call(self, x):
        return keras.ops.matmul(x, keras.ops.matmul(self.a, self.b))


def test_weight_only_work_is_left_out():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, _ProductKernel()(inputs))
    assert per_image_flops(model, lambda n: [tf.TensorSpec((n, 4))]) == 2 * 4 * 7  # not the 2 * 4 * 5 * 7 of a @ b


def test_step_flops_follow_the_passes_each_step_makes():
    f_d, f_g, k = 1, 100, 5
    flops = step_flops({"pgd_steps": k}, "adversarial", f_d, f_g)
    assert flops["pgd-at"] == (2 * k + 3) * f_d  # k attack passes to the input, one update
    # Rob-GAN adds D's update on the fakes, G's forward pass for them, and G's update through D
    assert flops["robgan"] - flops["pgd-at"] == 3 * f_d + f_g + (2 * f_g + 2 * f_d)
    assert step_flops({"pgd_steps": k}, "clean", f_d, f_g)["robgan"] - flops["robgan"] == 3 * f_d
