"""Training stages as `keras.Model` subclasses with their own `train_step`: attack, loss, apply.

Rob-GAN: `RobGAN` co-trains the generator and the two-headed discriminator on PGD-attacked real
images and generated ones; `FineTuner` then trains only the classifier (D's trunk and class head)
on attacked real and attacked generated images, with G frozen. Baselines that train the
classifier alone: `AdversarialTraining` (PGD-AT, FGSM-RS) and `TRADES`; each can mix images of a
frozen generator into its batches. The classifier is built once and passed in. All run under
`tf.distribute` strategies: losses are global-batch means, every replica draws its own numbers.
"""

import keras
import tensorflow as tf

from robgan_tf import losses
from robgan_tf.diffaugment import augment
from robgan_tf.attacks import default_step_size, pgd


def _accuracy(labels, logits):
    return tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)


class _AdversarialStage(keras.Model):
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

    def apply(self, optimizer, tape, loss, variables, average=False):
        """One optimizer update of `variables` from the (scaled) loss recorded on `tape`; with
        `average`, then one step of the classifier's weight average, when the run keeps one."""
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        if average and self.average is not None:
            self.average.update()

    def record(self, **values):
        for name, value in values.items():
            self.trackers[name].update_state(value)
        return {n: m.result() for n, m in self.trackers.items()}


def _mean_loss(optimizer, per_example):
    """The global-batch mean of per-example losses, scaled for mixed precision (in the tape)."""
    return optimizer.scale_loss(tf.nn.compute_average_loss(per_example))


class RobGAN(_AdversarialStage):
    """Co-training: D learns classes on PGD-attacked real images and real/fake on real images
    (attacked too, unless `real_rf_input="clean"`) and generated ones; G fools D.

    Each batch holds n_dis discriminator batches: feed it n_dis x the batch size."""

    metric_names = ("d_loss", "g_loss", "adv_acc", "fake_acc", "rf_acc", "eps")

    def __init__(self, generator, discriminator, classifier, *, fake_class_weight=0.0, n_dis=1,
                 real_rf_input="adversarial", gan_loss="bce", g_class_weight=1.0, diffaugment=(), **kwargs):
        super().__init__(classifier, generator, **kwargs)
        if real_rf_input not in ("adversarial", "clean"):
            raise ValueError(f"real_rf_input must be adversarial or clean, got {real_rf_input!r}")
        self.discriminator = discriminator
        self.fake_class_weight, self.n_dis, self.real_rf_input = float(fake_class_weight), int(n_dis), real_rf_input
        self.gan_loss, self.g_class_weight, self.diffaugment = gan_loss, float(g_class_weight), tuple(diffaugment)

    def compile(self, d_optimizer, g_optimizer, **kwargs):
        super().compile(**kwargs)
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer
        self.step_optimizer = d_optimizer

    def train_step(self, data):
        """n_dis D updates, each on its own 1/n_dis of the batch, then one G update."""
        x, y = data
        for x_part, y_part in zip(tf.split(x, self.n_dis), tf.split(y, self.n_dis)):
            self.discriminator_step(x_part, y_part)
        step = tf.convert_to_tensor(self.g_optimizer.iterations)
        *_, s_z, s_y, _, s_augment = self.seeds(step, 7)  # salts 3, 4, 6: never the D step's
        return self.record(g_loss=self.generator_step(tf.shape(x)[0] // self.n_dis, s_z, s_y, s_augment))

    def discriminator_step(self, x, y):
        step = tf.convert_to_tensor(self.d_optimizer.iterations)
        s_attack, s_z, s_y, *_, s_augment = self.seeds(step, 6)  # salts 3, 4: the G step's
        eps = self.current_eps(step)
        # Attack the real images; draw the fakes.
        x_adv = self.attack(x, y, eps, s_attack)
        z, y_fake = self.sample_inputs(tf.shape(x)[0], s_z, s_y)
        x_fake = self.generator([z, y_fake], training=True)
        # D's loss on attacked reals (classes), reals (real/fake) and fakes, the real/fake inputs
        # augmented alike.
        with tf.GradientTape() as tape:
            real = self.discriminator(x_adv, training=True)
            rf_images = x if self.real_rf_input == "clean" else x_adv
            real_rf = (self.discriminator(augment(rf_images, s_augment, self.diffaugment), training=True)["adv"]
                       if self.diffaugment or self.real_rf_input == "clean" else real["adv"])
            fake = self.discriminator(augment(x_fake, s_augment, self.diffaugment), training=True)
            d_losses = losses.robgan_discriminator_loss(y, real["cls"], real_rf, y_fake, fake["cls"], fake["adv"],
                                                        self.fake_class_weight, self.gan_loss)
            d_loss = _mean_loss(self.d_optimizer, d_losses)
        # Update D and the classifier's weight average.
        self.apply(self.d_optimizer, tape, d_loss, self.discriminator.trainable_variables, average=True)
        rf_acc = 0.5 * (tf.cast(real_rf[:, 0] > 0, tf.float32) + tf.cast(fake["adv"][:, 0] < 0, tf.float32))
        self.record(d_loss=tf.reduce_mean(d_losses), adv_acc=_accuracy(y, real["cls"]),
                    fake_acc=_accuracy(y_fake, fake["cls"]), rf_acc=rf_acc, eps=eps)

    def generator_step(self, batch, seed_z, seed_y, seed_augment):
        z, labels = self.sample_inputs(batch, seed_z, seed_y)
        # G's loss through D on fresh fakes (augmented as D saw them).
        with tf.GradientTape() as tape:
            fake = self.discriminator(augment(self.generator([z, labels], training=True), seed_augment,
                                              self.diffaugment), training=True)
            g_losses = losses.robgan_generator_loss(labels, fake["cls"], fake["adv"], self.g_class_weight,
                                                    self.gan_loss)
            g_loss = _mean_loss(self.g_optimizer, g_losses)
        # Update G.
        self.apply(self.g_optimizer, tape, g_loss, self.generator.trainable_variables)
        return tf.reduce_mean(g_losses)


class ConditionalGAN(RobGAN):
    """A plain conditional GAN: Rob-GAN with the real images left clean (the control)."""

    def attack(self, x, y, eps, seed, **kwargs):
        return x


class FineTuner(_AdversarialStage):
    """Fine-tuning ("Rob-GAN w/ FT"): CE(adv real) + λ·CE(adv fake) on the classifier, G frozen."""

    metric_names = ("loss", "adv_acc", "fake_adv_acc", "eps")

    def __init__(self, generator, classifier, *, lam=0.5, **kwargs):
        super().__init__(classifier, generator, **kwargs)
        self.lam = float(lam)

    def compile(self, optimizer, **kwargs):
        super().compile(**kwargs)
        self.ft_optimizer = self.step_optimizer = optimizer

    def train_step(self, data):
        step = tf.convert_to_tensor(self.ft_optimizer.iterations)
        s_attack, s_fake_attack, s_z, s_y, s_mix_z, s_mix_y = self.seeds(step, 6)
        x, y, smoothing = self.unpack(data)
        x, y = self.mix_generated(x, y, s_mix_z, s_mix_y)
        eps = self.current_eps(step)
        # Attack real and generated images.
        z, y_fake = self.sample_inputs(tf.shape(x)[0], s_z, s_y)
        x_fake = self.generator([z, y_fake], training=False)
        x_adv = self.attack(x, y, eps, s_attack)
        fake_adv = self.attack(x_fake, y_fake, eps, s_fake_attack)
        # The classifier's loss on both.
        with tf.GradientTape() as tape:
            real_logits = self.classifier(x_adv, training=True)
            fake_logits = self.classifier(fake_adv, training=True)
            per_example = losses.finetune_loss(y, real_logits, y_fake, fake_logits, self.lam, smoothing)
            loss = _mean_loss(self.ft_optimizer, per_example)
        # Update the classifier and its weight average.
        self.apply(self.ft_optimizer, tape, loss, self.classifier.trainable_variables, average=True)
        return self.record(loss=tf.reduce_mean(per_example), adv_acc=_accuracy(y, real_logits),
                           fake_adv_acc=_accuracy(y_fake, fake_logits), eps=eps)


class _ClassifierStage(_AdversarialStage):
    """A classifier trained alone (with a frozen generator when it mixes generated images in)."""

    def compile(self, optimizer, **kwargs):
        super().compile(**kwargs)
        self.c_optimizer = self.step_optimizer = optimizer


class AdversarialTraining(_ClassifierStage):
    """Cross-entropy on attacked images: PGD-AT (Madry et al. 2018) with k PGD steps; FGSM-RS
    ("Fast is better than free", Wong et al. 2020) with one step of 1.25·eps from a random
    start; standard training with `pgd_steps=0`."""

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
            loss = _mean_loss(self.c_optimizer, per_example)
        # Update the classifier and its weight average.
        self.apply(self.c_optimizer, tape, loss, self.classifier.trainable_variables, average=True)
        return self.record(loss=tf.reduce_mean(per_example), adv_acc=_accuracy(y, logits), eps=eps)


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
            loss = _mean_loss(self.c_optimizer, per_example)
        # Update the classifier and its weight average.
        self.apply(self.c_optimizer, tape, loss, self.classifier.trainable_variables, average=True)
        return self.record(loss=tf.reduce_mean(per_example), clean_acc=_accuracy(y, clean_logits),
                           adv_acc=_accuracy(y, adv_logits), eps=eps)
