"""Rob-GAN's training stages (see training.AdversarialStage for what they share).

`RobGAN` co-trains the generator and the two-headed discriminator on PGD-attacked real images
and generated ones; `FineTuner` then trains only the classifier (D's trunk and class head) on
attacked real and attacked generated images, with G frozen. `ConditionalGAN` is the co-training
without the attack, the control for generated data.
"""

import tensorflow as tf

from robgan_tf import losses
from robgan_tf.diffaugment import augment
from robgan_tf.training import AdversarialStage, accuracy, mean_loss


class RobGAN(AdversarialStage):
    """Co-training: D learns classes on PGD-attacked real images and real/fake on real images
    (attacked too, unless `real_rf_input="clean"`) and generated ones; G fools D.

    Each batch holds n_dis discriminator batches: feed it n_dis x the batch size. With a
    projection discriminator, D also sees the images' labels; with `generator_average`, each G
    update also updates G's weight average."""

    metric_names = ("d_loss", "g_loss", "adv_acc", "fake_acc", "rf_acc", "eps")

    def __init__(self, generator, discriminator, classifier, *, fake_class_weight=0.0, n_dis=1,
                 real_rf_input="adversarial", gan_loss="bce", g_class_weight=1.0, diffaugment=(),
                 generator_average=None, **kwargs):
        super().__init__(classifier, generator, **kwargs)
        if real_rf_input not in ("adversarial", "clean"):
            raise ValueError(f"real_rf_input must be adversarial or clean, got {real_rf_input!r}")
        self.discriminator = discriminator
        self.fake_class_weight, self.n_dis, self.real_rf_input = float(fake_class_weight), int(n_dis), real_rf_input
        self.gan_loss, self.g_class_weight, self.diffaugment = gan_loss, float(g_class_weight), tuple(diffaugment)
        self.generator_average = generator_average
        self.projection = len(discriminator.inputs) == 2

    def judge(self, images, labels):
        """D's outputs on images of the given labels (which only a projection head reads)."""
        return self.discriminator([images, labels] if self.projection else images, training=True)

    def compile(self, d_optimizer, g_optimizer, **kwargs):
        super().compile(**kwargs)
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer
        self.step_optimizer = d_optimizer

    def train_step(self, data):
        """n_dis D updates, each on its own 1/n_dis of the batch, then one G update on the last D
        update's fakes (so G's forward pass runs once per fake, not twice)."""
        x, y = data
        for x_part, y_part in zip(tf.split(x, self.n_dis), tf.split(y, self.n_dis)):
            g_tape, x_fake, y_fake = self.discriminator_step(x_part, y_part)
        step = tf.convert_to_tensor(self.g_optimizer.iterations)
        s_augment = self.seeds(step, 7)[6]  # salt 6: never the D step's
        return self.record(g_loss=self.generator_step(g_tape, x_fake, y_fake, s_augment))

    def discriminator_step(self, x, y):
        """One D update; returns the fakes it drew, with the tape of G's forward pass."""
        step = tf.convert_to_tensor(self.d_optimizer.iterations)
        s_attack, s_z, s_y, *_, s_augment = self.seeds(step, 6)  # salts 3, 4 unused: they were G's fresh fakes
        eps = self.current_eps(step)
        # Attack the real images; draw the fakes, recording G's forward pass for G's update.
        x_adv = self.attack(x, y, eps, s_attack)
        z, y_fake = self.sample_inputs(tf.shape(x)[0], s_z, s_y)
        with tf.GradientTape() as g_tape:
            x_fake = self.generator([z, y_fake], training=True)
        # D's loss on attacked reals (classes), reals (real/fake) and fakes, the real/fake inputs
        # augmented alike.
        with tf.GradientTape() as tape:
            real = self.judge(x_adv, y)
            rf_images = x if self.real_rf_input == "clean" else x_adv
            real_rf = (self.judge(augment(rf_images, s_augment, self.diffaugment), y)["adv"]
                       if self.diffaugment or self.real_rf_input == "clean" else real["adv"])
            fake = self.judge(augment(x_fake, s_augment, self.diffaugment), y_fake)
            d_losses = losses.robgan_discriminator_loss(y, real["cls"], real_rf, y_fake, fake["cls"], fake["adv"],
                                                        self.fake_class_weight, self.gan_loss)
            d_loss = mean_loss(self.d_optimizer, d_losses)
        # Update D and the classifier's weight average.
        self.apply(self.d_optimizer, tape, d_loss, self.discriminator.trainable_variables, average=self.average)
        rf_acc = 0.5 * (tf.cast(real_rf[:, 0] > 0, tf.float32) + tf.cast(fake["adv"][:, 0] < 0, tf.float32))
        self.record(d_loss=tf.reduce_mean(d_losses), adv_acc=accuracy(y, real["cls"]),
                    fake_acc=accuracy(y_fake, fake["cls"]), rf_acc=rf_acc, eps=eps)
        return g_tape, x_fake, y_fake

    def generator_step(self, g_tape, x_fake, labels, seed_augment):
        # G's loss through the updated D on the fakes (augmented as D saw them), continuing the
        # tape that recorded G's forward pass.
        with g_tape:
            fake = self.judge(augment(x_fake, seed_augment, self.diffaugment), labels)
            g_losses = losses.robgan_generator_loss(labels, fake["cls"], fake["adv"], self.g_class_weight,
                                                    self.gan_loss)
            g_loss = mean_loss(self.g_optimizer, g_losses)
        # Update G and its weight average.
        self.apply(self.g_optimizer, g_tape, g_loss, self.generator.trainable_variables,
                   average=self.generator_average)
        return tf.reduce_mean(g_losses)


class ConditionalGAN(RobGAN):
    """A plain conditional GAN: Rob-GAN with the real images left clean (the control)."""

    def attack(self, x, y, eps, seed, **kwargs):
        return x


class FineTuner(AdversarialStage):
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
            loss = mean_loss(self.ft_optimizer, per_example)
        # Update the classifier and its weight average.
        self.apply(self.ft_optimizer, tape, loss, self.classifier.trainable_variables, average=self.average)
        return self.record(loss=tf.reduce_mean(per_example), adv_acc=accuracy(y, real_logits),
                           fake_adv_acc=accuracy(y_fake, fake_logits), eps=eps)
