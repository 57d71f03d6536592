"""SN-GAN style ResNet generator and two-headed discriminator for Rob-GAN.

Both models take and give images as float32 in [0, 1]; rescaling to [-1, 1] happens inside.
The discriminator returns {"adv": real/fake logit (N, 1), "cls": class logits (N, K)}; with a
projection head it takes [images, labels], since its real/fake logit depends on the label.
`classifier_from` cuts out the class head, which is the robust classifier we export.
"""

import json

import keras
from keras import layers, ops

SPECTRAL_NORM_CHOICES = ("none", "head", "all")


def _maybe_sn(layer, on):
    return layers.SpectralNormalization(layer) if on else layer


def upsample(x):
    """Nearest-neighbour 2x up-sampling with `repeat`, which XLA can differentiate on CPU."""
    return ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)


@keras.saving.register_keras_serializable("robgan_tf")
class ConditionalBatchNorm(layers.Layer):
    """Batch normalisation whose scale and offset are looked up per class: call([x, y])."""

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.bn = layers.BatchNormalization(center=False, scale=False)

    def build(self, input_shape):
        x_shape = tuple(input_shape[0])
        channels = x_shape[-1]
        self.bn.build(x_shape)
        self.gamma = self.add_weight(shape=(self.num_classes, channels), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(self.num_classes, channels), initializer="zeros", name="beta")

    def call(self, inputs, training=None):
        x, y = inputs
        y = ops.cast(y, "int32")
        gamma = ops.take(self.gamma, y, axis=0)[:, None, None, :]
        beta = ops.take(self.beta, y, axis=0)[:, None, None, :]
        return self.bn(x, training=training) * gamma + beta

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable("robgan_tf")
class GeneratorBlock(layers.Layer):
    """Residual up-sampling block: CBN-ReLU-up-conv-CBN-ReLU-conv + up-conv1x1 shortcut."""

    def __init__(self, channels, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.num_classes = channels, num_classes
        self.cbn1 = ConditionalBatchNorm(num_classes)
        self.cbn2 = ConditionalBatchNorm(num_classes)
        self.conv1 = layers.Conv2D(channels, 3, padding="same")
        self.conv2 = layers.Conv2D(channels, 3, padding="same")
        self.shortcut = layers.Conv2D(channels, 1)

    def build(self, input_shape):
        x_shape, y_shape = tuple(input_shape[0]), tuple(input_shape[1])
        up_shape = (x_shape[0], 2 * x_shape[1], 2 * x_shape[2], x_shape[3])
        out_shape = up_shape[:3] + (self.channels,)
        self.cbn1.build((x_shape, y_shape))
        self.conv1.build(up_shape)
        self.cbn2.build((out_shape, y_shape))
        self.conv2.build(out_shape)
        self.shortcut.build(up_shape)

    def call(self, inputs, training=None):
        x, y = inputs
        h = ops.relu(self.cbn1([x, y], training=training))
        h = self.conv1(upsample(h))
        h = ops.relu(self.cbn2([h, y], training=training))
        return self.conv2(h) + self.shortcut(upsample(x))

    def compute_output_shape(self, input_shape):
        x_shape = input_shape[0]
        return (x_shape[0], 2 * x_shape[1], 2 * x_shape[2], self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "num_classes": self.num_classes}


@keras.saving.register_keras_serializable("robgan_tf")
class DiscriminatorBlock(layers.Layer):
    """Residual block (ReLU-conv-ReLU-conv [avg-pool]) with a 1x1 shortcut when shapes change.

    `first=True` is SN-GAN's optimised first block: no leading ReLU. Every shortcut convolves,
    then pools: the same function as pooling first (both are linear), and it leaves no conv + bias
    feeding the sum straight into the next block's shortcut conv, a pattern on which Grappler's
    remapper fails ("remapper failed: ... Mutation::Apply error") and drops its fusions.
    """

    def __init__(self, channels, downsample=True, first=False, spectral_norm=False, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.downsample, self.first = channels, downsample, first
        self.spectral_norm = spectral_norm
        self.conv1 = _maybe_sn(layers.Conv2D(channels, 3, padding="same"), spectral_norm)
        self.conv2 = _maybe_sn(layers.Conv2D(channels, 3, padding="same"), spectral_norm)
        self.pool = layers.AveragePooling2D(pool_size=2)
        self.shortcut = None

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if self.first or self.downsample or input_shape[-1] != self.channels:
            self.shortcut = _maybe_sn(layers.Conv2D(self.channels, 1), self.spectral_norm)
            self.shortcut.build(input_shape)
        self.conv1.build(input_shape)
        self.conv2.build(input_shape[:3] + (self.channels,))

    def call(self, x, training=None):
        h = x if self.first else ops.relu(x)
        h = self.conv2(ops.relu(self.conv1(h, training=training)), training=training)
        if self.downsample:
            h = self.pool(h)
        skip = x
        if self.shortcut is not None:
            skip = self.shortcut(x, training=training)
            if self.downsample:
                skip = self.pool(skip)
        return h + skip

    def compute_output_shape(self, input_shape):
        div = 2 if self.downsample else 1
        return (input_shape[0], input_shape[1] // div, input_shape[2] // div, self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "downsample": self.downsample,
                "first": self.first, "spectral_norm": self.spectral_norm}


@keras.saving.register_keras_serializable("robgan_tf")
class GlobalSumPooling(layers.Layer):
    """Sum over height and width (SN-GAN's discriminator pooling)."""

    def call(self, x):
        return ops.sum(x, axis=(1, 2))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[3])


@keras.saving.register_keras_serializable("robgan_tf")
class Projection(layers.Layer):
    """The projection discriminator's label term (Miyato & Koyama 2018): <embed(y), h>, shape (N, 1);
    call([h, y]). embed(y) = onehot(y)·W, so that W can be spectrally normalised with the rest of
    the real/fake head (as SN-GAN does), which Keras' wrapper does not do for an Embedding."""

    def __init__(self, num_classes, channels, spectral_norm=False, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.channels, self.spectral_norm = num_classes, channels, spectral_norm
        dense = layers.Dense(channels, use_bias=False, dtype="float32")  # float32 under a mixed policy, as the heads
        self.embed = layers.SpectralNormalization(dense, dtype="float32") if spectral_norm else dense

    def build(self, input_shape):
        self.embed.build((None, self.num_classes))

    def call(self, inputs):
        features, labels = inputs
        embedded = self.embed(ops.one_hot(ops.cast(labels, "int32"), self.num_classes, dtype=features.dtype))
        return ops.sum(embedded * features, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "channels": self.channels,
                "spectral_norm": self.spectral_norm}


def start_size(image_size):
    """Smallest map the generator starts from, and how many 2x up-samplings reach image_size."""
    h, w = image_size
    ups = 0
    while h % 2 == 0 and w % 2 == 0 and max(h, w) > 7:
        h, w, ups = h // 2, w // 2, ups + 1
    if ups == 0:
        raise ValueError(f"image size {image_size} cannot be reached by 2x up-sampling from a small map")
    return (h, w), ups


def build_generator(image_shape, num_classes, width=64, z_dim=128):
    """G(z, y): dense to a small map, residual up-sampling blocks with class-conditional BN."""
    (h0, w0), ups = start_size(image_shape[:2])
    z = keras.Input((z_dim,), name="z")
    y = keras.Input((), dtype="int32", name="label")
    h = layers.Dense(h0 * w0 * width, name="project")(z)
    h = layers.Reshape((h0, w0, width))(h)
    for i in range(ups):
        h = GeneratorBlock(width, num_classes, name=f"up{i}")([h, y])
    h = layers.ReLU()(layers.BatchNormalization(name="out_bn")(h))
    h = layers.Conv2D(image_shape[-1], 3, padding="same", activation="tanh", name="out_conv", dtype="float32")(h)
    image = layers.Rescaling(0.5, offset=0.5, name="image", dtype="float32")(h)
    return keras.Model([z, y], image, name="generator")


def build_discriminator(image_shape, num_classes, width=64, depth=4, spectral_norm="none", projection=False):
    """D(x): `depth` residual blocks (the first two halve the size), ReLU, sum pooling, two heads;
    with `projection`, D([x, y]) whose real/fake logit is linear(h) + <embed(y), h>."""
    if spectral_norm not in SPECTRAL_NORM_CHOICES:
        raise ValueError(f"spectral_norm must be one of {SPECTRAL_NORM_CHOICES}, got {spectral_norm!r}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    sn_trunk = spectral_norm == "all"
    x = keras.Input(image_shape, name="image")
    h = layers.Rescaling(2.0, offset=-1.0, name="to_signed")(x)
    for i in range(depth):
        h = DiscriminatorBlock(width, downsample=i < 2, first=i == 0, spectral_norm=sn_trunk,
                               name=f"block{i}")(h)
    features = GlobalSumPooling(name="sum_pool")(layers.ReLU()(h))
    # Heads in float32 so that logits stay float32 under a mixed-precision policy.
    adv = (layers.SpectralNormalization(layers.Dense(1, dtype="float32"), name="adv", dtype="float32")
           if spectral_norm != "none" else layers.Dense(1, name="adv", dtype="float32"))
    rf_logit = adv(features)
    inputs = x
    if projection:
        label = keras.Input((), dtype="int32", name="label")
        rf_logit = layers.Add(name="adv_projected", dtype="float32")(
            [rf_logit, Projection(num_classes, width, spectral_norm != "none", name="projection", dtype="float32")(
                [features, label])])
        inputs = [x, label]
    outputs = {"adv": rf_logit, "cls": layers.Dense(num_classes, name="cls", dtype="float32")(features)}
    return keras.Model(inputs, outputs, name="discriminator")


def classifier_from(discriminator):
    """The robust classifier: D's trunk and class head, returning logits (shares D's weights)."""
    return keras.Model(discriminator.inputs[0], discriminator.get_layer("cls").output, name="classifier")


def float32_copy(model):
    """The model itself, or a float32 copy of it when it computes in float16/bfloat16."""
    config = keras.saving.serialize_keras_object(model)
    text = json.dumps(config)
    if "mixed_float16" not in text and "mixed_bfloat16" not in text:
        return model
    text = text.replace('"mixed_float16"', '"float32"').replace('"mixed_bfloat16"', '"float32"')
    copy = keras.saving.deserialize_keras_object(json.loads(text))
    copy.set_weights(model.get_weights())
    return copy
