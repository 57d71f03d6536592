"""Training stages as `keras.Model` subclasses with their own `train_step`.

Rob-GAN: `RobGAN` co-trains the generator and the two-headed discriminator on PGD-attacked real
images and generated ones; `FineTuner` then trains only D's classifier on attacked real and
attacked generated images, with G frozen. Baselines that train a classifier alone:
`AdversarialTraining` (PGD-AT, FGSM-RS, or standard training) and `TRADES`; each can mix
images of a frozen generator into its batches. All run under `tf.distribute` strategies:
losses are averaged over the global batch and every replica draws its own random numbers.
"""

import keras
import tensorflow as tf

from robgan_tf.attacks import default_step_size, pgd
from robgan_tf.models import classifier_from


def _per_example_ce(labels, logits):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.cast(logits, tf.float32))


def _per_example_bce(target, logits):
    logits = tf.cast(logits[:, 0], tf.float32)
    return tf.nn.sigmoid_cross_entropy_with_logits(tf.fill(tf.shape(logits), target), logits)


def _accuracy(labels, logits):
    return tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)


class _AdversarialStage(keras.Model):
    """What every stage shares: the ε warm-up, per-replica random seeds, PGD on the classifier."""

    metric_names = ()

    def __init__(self, classifier, generator=None, *, eps, pgd_steps, pgd_step_size=None,
                 eps_warmup_steps=0, seed=0, attack_jit=False, attack_loss_scale=1.0, gen_ratio=0.0, **kwargs):
        super().__init__(**kwargs)
        self.classifier, self.generator = classifier, generator
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
        """Class logits of the robust classifier (D's class head)."""
        return self.classifier(images, training=training)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def current_eps(self, step):
        """ε ramps linearly from 0 to its target over the first `eps_warmup_steps` steps."""
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

    def attack(self, x, y, eps, seed):
        return self._attack(self._logits, x, y, eps, self.pgd_steps, self.step_size_ratio * eps, seed,
                            loss_scale=self.attack_loss_scale)

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

    def record(self, **values):
        for name, value in values.items():
            self.trackers[name].update_state(value)
        return {n: m.result() for n, m in self.trackers.items()}


REAL_INPUTS = ("adversarial", "clean")


class RobGAN(_AdversarialStage):
    """Co-training: D learns classes on PGD-attacked real images and real/fake on real images
    (attacked too, unless `real_rf_input="clean"`) and generated ones; G fools D.

    Each batch holds n_dis discriminator batches: feed it n_dis x the batch size."""

    metric_names = ("d_loss", "g_loss", "adv_acc", "fake_acc", "rf_acc", "eps")

    def __init__(self, generator, discriminator, *, fake_class_weight=0.0, n_dis=1,
                 real_rf_input="adversarial", **kwargs):
        super().__init__(classifier_from(discriminator), generator, **kwargs)
        self.discriminator = discriminator
        if real_rf_input not in REAL_INPUTS:
            raise ValueError(f"real_rf_input must be one of {REAL_INPUTS}, got {real_rf_input!r}")
        self.fake_class_weight, self.n_dis = float(fake_class_weight), int(n_dis)
        self.real_rf_input = real_rf_input

    def compile(self, d_optimizer, g_optimizer, **kwargs):
        super().compile(**kwargs)
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer

    def train_step(self, data):
        """n_dis D updates, each on its own 1/n_dis of the batch, then one G update."""
        x, y = data
        for x_part, y_part in zip(tf.split(x, self.n_dis), tf.split(y, self.n_dis)):
            self._discriminator_step(x_part, y_part)
        step = tf.convert_to_tensor(self.g_optimizer.iterations)
        _, _, _, s_z, s_y = self.seeds(step, 5)  # salts 3, 4: never the D step's
        return self.record(g_loss=self._generator_step(tf.shape(x)[0] // self.n_dis, s_z, s_y))

    def _discriminator_step(self, x, y):
        step = tf.convert_to_tensor(self.d_optimizer.iterations)
        s_attack, s_z, s_y = self.seeds(step, 3)
        eps = self.current_eps(step)
        x_adv = self.attack(x, y, eps, s_attack)
        z, y_fake = self.sample_inputs(tf.shape(x)[0], s_z, s_y)
        x_fake = self.generator([z, y_fake], training=True)
        with tf.GradientTape() as tape:
            real = self.discriminator(x_adv, training=True)
            real_rf = (self.discriminator(x, training=True)["adv"] if self.real_rf_input == "clean"
                       else real["adv"])
            fake = self.discriminator(x_fake, training=True)
            d_losses = (_per_example_bce(1.0, real_rf) + _per_example_bce(0.0, fake["adv"])
                        + _per_example_ce(y, real["cls"])
                        + self.fake_class_weight * _per_example_ce(y_fake, fake["cls"]))
            d_loss = self.d_optimizer.scale_loss(tf.nn.compute_average_loss(d_losses))
        d_vars = self.discriminator.trainable_variables
        self.d_optimizer.apply_gradients(zip(tape.gradient(d_loss, d_vars), d_vars))
        rf_acc = 0.5 * (tf.cast(real_rf[:, 0] > 0, tf.float32) + tf.cast(fake["adv"][:, 0] < 0, tf.float32))
        self.record(d_loss=tf.reduce_mean(d_losses), adv_acc=_accuracy(y, real["cls"]),
                    fake_acc=_accuracy(y_fake, fake["cls"]), rf_acc=rf_acc, eps=eps)

    def _generator_step(self, batch, seed_z, seed_y):
        z, labels = self.sample_inputs(batch, seed_z, seed_y)
        with tf.GradientTape() as tape:
            fake = self.discriminator(self.generator([z, labels], training=True), training=True)
            g_losses = _per_example_bce(1.0, fake["adv"]) + _per_example_ce(labels, fake["cls"])
            g_loss = self.g_optimizer.scale_loss(tf.nn.compute_average_loss(g_losses))
        g_vars = self.generator.trainable_variables
        self.g_optimizer.apply_gradients(zip(tape.gradient(g_loss, g_vars), g_vars))
        return tf.reduce_mean(g_losses)


class FineTuner(_AdversarialStage):
    """Fine-tuning ("Rob-GAN w/ FT"): CE(adv real) + λ·CE(adv fake) on D's classifier, G frozen."""

    metric_names = ("loss", "adv_acc", "fake_adv_acc", "eps")

    def __init__(self, generator, discriminator, *, lam=0.5, **kwargs):
        super().__init__(classifier_from(discriminator), generator, **kwargs)
        self.discriminator = discriminator
        self.lam = float(lam)

    def compile(self, optimizer, **kwargs):
        super().compile(**kwargs)
        self.ft_optimizer = optimizer

    def train_step(self, data):
        step = tf.convert_to_tensor(self.ft_optimizer.iterations)
        s_attack, s_fake_attack, s_z, s_y, s_mix_z, s_mix_y = self.seeds(step, 6)
        x, y = self.mix_generated(*data, s_mix_z, s_mix_y)
        eps = self.current_eps(step)
        z, y_fake = self.sample_inputs(tf.shape(x)[0], s_z, s_y)
        x_fake = self.generator([z, y_fake], training=False)
        x_adv = self.attack(x, y, eps, s_attack)
        fake_adv = self.attack(x_fake, y_fake, eps, s_fake_attack)
        with tf.GradientTape() as tape:
            real_logits = self.classifier(x_adv, training=True)
            fake_logits = self.classifier(fake_adv, training=True)
            losses = _per_example_ce(y, real_logits) + self.lam * _per_example_ce(y_fake, fake_logits)
            loss = self.ft_optimizer.scale_loss(tf.nn.compute_average_loss(losses))
        c_vars = self.classifier.trainable_variables
        self.ft_optimizer.apply_gradients(zip(tape.gradient(loss, c_vars), c_vars))
        return self.record(loss=tf.reduce_mean(losses), adv_acc=_accuracy(y, real_logits),
                           fake_adv_acc=_accuracy(y_fake, fake_logits), eps=eps)


class _ClassifierStage(_AdversarialStage):
    """A classifier trained alone (with a frozen generator when it mixes generated images in)."""

    def compile(self, optimizer, **kwargs):
        super().compile(**kwargs)
        self.c_optimizer = optimizer

    def scaled_loss(self, losses):
        """The global-batch mean of per-example `losses`, scaled for mixed precision (in the tape)."""
        return self.c_optimizer.scale_loss(tf.nn.compute_average_loss(losses))

    def update(self, tape, loss):
        c_vars = self.classifier.trainable_variables
        self.c_optimizer.apply_gradients(zip(tape.gradient(loss, c_vars), c_vars))


class AdversarialTraining(_ClassifierStage):
    """Cross-entropy on attacked images: PGD-AT (Madry et al. 2018) with k PGD steps; FGSM-RS
    ("Fast is better than free", Wong et al. 2020) with one step of 1.25·eps from a random
    start; standard training with `pgd_steps=0`."""

    metric_names = ("loss", "adv_acc", "eps")

    def train_step(self, data):
        step = tf.convert_to_tensor(self.c_optimizer.iterations)
        s_attack, s_z, s_y = self.seeds(step, 3)
        x, y = self.mix_generated(*data, s_z, s_y)
        eps = self.current_eps(step)
        x_adv = self.attack(x, y, eps, s_attack) if self.pgd_steps else x
        with tf.GradientTape() as tape:
            logits = self.classifier(x_adv, training=True)
            losses = _per_example_ce(y, logits)
            loss = self.scaled_loss(losses)
        self.update(tape, loss)
        return self.record(loss=tf.reduce_mean(losses), adv_acc=_accuracy(y, logits), eps=eps)


def _kl(p_logits, q_logits):
    """Per-example KL(p || q) between the softmax distributions of two logit tensors."""
    p_log = tf.nn.log_softmax(tf.cast(p_logits, tf.float32))
    return tf.reduce_sum(tf.exp(p_log) * (p_log - tf.nn.log_softmax(tf.cast(q_logits, tf.float32))), -1)


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
        x, y = self.mix_generated(*data, s_z, s_y)
        eps = self.current_eps(step)
        clean = tf.stop_gradient(self._logits(x))
        start = x + 0.001 * tf.random.stateless_normal(tf.shape(x), s_attack)
        x_adv = self._attack(self._logits, x, y, eps, self.pgd_steps, self.step_size_ratio * eps, s_attack,
                             loss=lambda logits: _kl(clean, logits), loss_scale=self.attack_loss_scale,
                             x_init=start)
        with tf.GradientTape() as tape:
            clean_logits = self.classifier(x, training=True)
            adv_logits = self.classifier(x_adv, training=True)
            losses = _per_example_ce(y, clean_logits) + self.beta * _kl(clean_logits, adv_logits)
            loss = self.scaled_loss(losses)
        self.update(tape, loss)
        return self.record(loss=tf.reduce_mean(losses), clean_acc=_accuracy(y, clean_logits),
                           adv_acc=_accuracy(y, adv_logits), eps=eps)


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
