"""Training stages as `keras.Model` subclasses with their own `train_step`: attack, loss, apply.

`AdversarialStage` holds what every stage shares (eps warm-up, per-replica seeds, PGD on the
classifier in inference mode, generated-image mixing, metric trackers, the optimizer update).
Here are the baselines that train the classifier alone: `AdversarialTraining` (PGD-AT), `RandomStartFGSM`,
`NoiseFGSM` and `TRADES`; each can mix images of a frozen generator or a synthetic set into its batches.
Rob-GAN's stages are in gan_training.py. The classifier is built once and passed in. All run
under `tf.distribute` strategies: losses are global-batch means, every replica draws its own numbers.
"""

import keras
import tensorflow as tf

from robgan_tf import losses
from robgan_tf.attacks import default_step_size, pgd


def accuracy(labels, logits):
    return tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)


class AdversarialStage(keras.Model):
    """What every stage shares: the eps warm-up, per-replica random seeds, PGD on the classifier,
    the optional mixing of generated images, and metric trackers named by `metric_names`."""

    metric_names = ()

    def __init__(self, classifier, generator=None, *, eps, pgd_steps, pgd_step_size=None,
                 eps_warmup_steps=0, seed=0, attack_jit=False, attack_loss_scale=1.0, gen_ratio=0.0, average=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.classifier, self.generator, self.average = classifier, generator, average
        if not 0.0 <= gen_ratio < 1.0:
            raise ValueError(f"gen_ratio must be in [0, 1), got {gen_ratio}")
        if gen_ratio and generator is None:
            raise ValueError("gen_ratio > 0 needs a generator")
        self.gen_ratio = float(gen_ratio)
        self.eps, self.pgd_steps = float(eps), int(pgd_steps)
        self.step_size_ratio = (default_step_size(1.0, pgd_steps) if pgd_step_size is None
                                else float(pgd_step_size) / max(self.eps, 1e-12))
        self.eps_warmup_steps, self.seed = int(eps_warmup_steps), int(seed)
        self.attack_loss_scale = float(attack_loss_scale)
        self.z_dim = generator.input[0].shape[-1] if generator is not None else None
        self.num_classes = classifier.output.shape[-1]
        self.trackers = {n: keras.metrics.Mean(name=n) for n in self.metric_names}
        self._attack = tf.function(pgd, jit_compile=True) if attack_jit else pgd
        self._logits = lambda x: self.classifier(x, training=False)

    def call(self, images, training=False):
        """Class logits of the robust classifier."""
        return self.classifier(images, training=training)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def current_eps(self, step):
        """eps ramps linearly from 0 to its target over the first `eps_warmup_steps` steps."""
        if self.eps_warmup_steps <= 0:
            return tf.constant(self.eps, tf.float32)
        frac = tf.cast(step + 1, tf.float32) / float(self.eps_warmup_steps)
        return self.eps * tf.minimum(frac, 1.0)

    def seeds(self, step, n):
        """n stateless seeds from the run seed, the optimizer step and the replica (each stage
        counts its own steps, so fine-tuning's step k draws what co-training's step k drew)."""
        ctx = tf.distribute.get_replica_context()
        replica = ctx.replica_id_in_sync_group if ctx is not None else 0
        base = tf.stack([tf.cast(self.seed, tf.int64) * 4096 + tf.cast(replica, tf.int64),
                         tf.cast(step, tf.int64)])
        return [tf.random.experimental.stateless_fold_in(base, i) for i in range(n)]

    def attack(self, x, y, eps, seed, **kwargs):
        """PGD on the classifier in inference mode (see attacks.pgd)."""
        return self._attack(self._logits, x, y, eps, self.pgd_steps, self.step_size_ratio * eps, seed,
                            loss_scale=self.attack_loss_scale, **kwargs)

    @staticmethod
    def unpack(data):
        """(images, labels, label smoothing per image, which only data.MixedTrainData's batches carry)."""
        x, y, *smoothing = data
        return x, y, (smoothing[0] if smoothing else 0.0)

    def sample_inputs(self, batch, seed_z, seed_y):
        z = tf.random.stateless_normal((batch, self.z_dim), seed_z)
        labels = tf.random.stateless_uniform((batch,), seed_y, 0, self.num_classes, dtype=tf.int32)
        return z, labels

    def mix_generated(self, x, y, seed_z, seed_y):
        """Replaces a fraction `gen_ratio` of the batch by G's samples (G in inference mode) of
        random classes, as in generated-data augmentation (Gowal et al. 2021)."""
        if not self.gen_ratio:
            return x, y
        n = tf.cast(tf.round(self.gen_ratio * tf.cast(tf.shape(x)[0], tf.float32)), tf.int32)
        z, labels = self.sample_inputs(n, seed_z, seed_y)
        fake = tf.cast(self.generator([z, labels], training=False), x.dtype)
        return tf.concat([x[n:], fake], 0), tf.concat([y[n:], labels], 0)

    @property
    def steps_done(self):
        """Optimizer steps this stage has made (a checkpointed counter: it survives a resume)."""
        return self.step_optimizer.iterations

    def apply(self, optimizer, tape, loss, variables, average=None):
        """One optimizer update of `variables` from the (scaled) loss recorded on `tape`, then one
        step of their weight `average` (averaging.WeightAverage) when there is one."""
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        if average is not None:
            average.update()

    def record(self, **values):
        for name, value in values.items():
            self.trackers[name].update_state(value)
        return {n: m.result() for n, m in self.trackers.items()}


def mean_loss(optimizer, per_example, penalty=None):
    """The global-batch mean of per-example losses plus a weight `penalty` if any (counted once
    across replicas), scaled for mixed precision (in the tape)."""
    loss = tf.nn.compute_average_loss(per_example)
    if penalty is not None:
        loss += tf.nn.scale_regularization_loss(penalty)
    return optimizer.scale_loss(loss)


class _ClassifierStage(AdversarialStage):
    """A classifier trained alone (with a frozen generator when it mixes generated images in), with
    an optional L2 weight decay: λ/2·‖w‖² in its loss, so λ·w in its gradient, as in the reference
    code's SGD(weight_decay=λ)."""

    def __init__(self, classifier, generator=None, *, weight_decay=0.0, **kwargs):
        super().__init__(classifier, generator, **kwargs)
        self.weight_decay = float(weight_decay)

    def penalty(self):
        """λ/2·‖w‖² over the classifier's trainable weights (None without weight decay)."""
        if not self.weight_decay:
            return None
        return self.weight_decay * tf.add_n([tf.nn.l2_loss(v) for v in self.classifier.trainable_variables])

    def compile(self, optimizer, **kwargs):
        super().compile(**kwargs)
        self.c_optimizer = self.step_optimizer = optimizer


class AdversarialTraining(_ClassifierStage):
    """Cross-entropy on attacked images: PGD-AT (Madry et al. 2018) with k PGD steps; standard
    training with `pgd_steps=0`."""

    metric_names = ("loss", "adv_acc", "eps")

    def train_step(self, data):
        step = tf.convert_to_tensor(self.c_optimizer.iterations)
        s_attack, s_z, s_y = self.seeds(step, 3)
        x, y, smoothing = self.unpack(data)
        x, y = self.mix_generated(x, y, s_z, s_y)
        eps = self.current_eps(step)
        # Attack.
        x_adv = self.attack(x, y, eps, s_attack) if self.pgd_steps else x
        # Loss on the attacked images.
        with tf.GradientTape() as tape:
            logits = self.classifier(x_adv, training=True)
            per_example = losses.cross_entropy(y, logits, smoothing)
            loss = mean_loss(self.c_optimizer, per_example, self.penalty())
        # Update the classifier and its weight average.
        self.apply(self.c_optimizer, tape, loss, self.classifier.trainable_variables, average=self.average)
        return self.record(loss=tf.reduce_mean(per_example), adv_acc=accuracy(y, logits), eps=eps)


class TRADES(_ClassifierStage):
    """TRADES (Zhang et al. 2019): CE(clean) + beta·KL(f(x) || f(x')), x' maximising that KL by
    PGD from x plus small Gaussian noise, the model in inference mode while attacking."""

    metric_names = ("loss", "clean_acc", "adv_acc", "eps")

    def __init__(self, classifier, generator=None, *, beta=6.0, **kwargs):
        super().__init__(classifier, generator, **kwargs)
        self.beta = float(beta)

    def train_step(self, data):
        step = tf.convert_to_tensor(self.c_optimizer.iterations)
        s_attack, s_z, s_y = self.seeds(step, 3)
        x, y, smoothing = self.unpack(data)
        x, y = self.mix_generated(x, y, s_z, s_y)
        eps = self.current_eps(step)
        # Attack the KL term from x plus small Gaussian noise.
        clean = tf.stop_gradient(self._logits(x))
        start = x + 0.001 * tf.random.stateless_normal(tf.shape(x), s_attack)
        x_adv = self.attack(x, y, eps, s_attack, loss=lambda logits: losses.kl_divergence(clean, logits),
                            x_init=start)
        # TRADES' loss, the model in training mode.
        with tf.GradientTape() as tape:
            clean_logits = self.classifier(x, training=True)
            adv_logits = self.classifier(x_adv, training=True)
            per_example = losses.trades_loss(y, clean_logits, adv_logits, self.beta, smoothing)
            loss = mean_loss(self.c_optimizer, per_example, self.penalty())
        # Update the classifier and its weight average.
        self.apply(self.c_optimizer, tape, loss, self.classifier.trainable_variables, average=self.average)
        return self.record(loss=tf.reduce_mean(per_example), clean_acc=accuracy(y, clean_logits),
                           adv_acc=accuracy(y, adv_logits), eps=eps)


class RandomStartFGSM(AdversarialTraining):
    """FGSM-RS ("Fast is better than free", Wong et al. 2020): cross-entropy on x + δ + α·sign(∇)
    projected onto the eps-ball and [0, 1], δ uniform in ±eps (α = 1.25·eps). The gradient is taken
    at x + δ clipped to [0, 1] (`clip_start`, the reference's CIFAR-10 script) or as it is, pixels
    outside [0, 1] included (its MNIST script)."""

    def __init__(self, classifier, generator=None, *, clip_start=True, **kwargs):
        super().__init__(classifier, generator, **kwargs)
        self.clip_start = bool(clip_start)

    def attack(self, x, y, eps, seed, **kwargs):
        # pgd's own start, drawn here so that it is the same under XLA (whose stateless RNG draws other numbers)
        start = x + tf.random.stateless_uniform(tf.shape(x), seed, -eps, eps)
        return super().attack(x, y, eps, seed, x_init=start, clip_init=self.clip_start, **kwargs)


class NoiseFGSM(AdversarialTraining):
    """N-FGSM (de Jorge et al. 2022): cross-entropy on x + δ + eps·sign(∇), δ uniform in ±noise·eps
    (the paper: noise = 2), not projected back to the eps-ball (the images stay within (noise + 1)·eps
    of x, and in [0, 1]). Its stronger noise and missing projection are what keep single-step training
    from overfitting catastrophically."""

    def __init__(self, classifier, generator=None, *, noise=2.0, **kwargs):
        super().__init__(classifier, generator, **kwargs)
        self.noise = float(noise)

    def attack(self, x, y, eps, seed, **kwargs):
        start = x + tf.random.stateless_uniform(tf.shape(x), seed, -self.noise * eps, self.noise * eps)
        # one PGD step of eps in the (noise + 1)·eps-ball, which no such step can leave: no projection
        return self._attack(self._logits, x, y, (self.noise + 1.0) * eps, 1, eps, seed,
                            loss_scale=self.attack_loss_scale, x_init=start)
