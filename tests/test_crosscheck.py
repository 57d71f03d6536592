"""Our attacks against independent implementations on the same model: foolbox's LinfPGD and
ART's AutoProjectedGradientDescent must find the same robust accuracy within 2 points."""

import numpy as np
import pytest
import tensorflow as tf

from robgan_tf import evaluation
from robgan_tf.config import AttackSettings

from conftest import make_color_images

EPS = (1.5 / 255, 2 / 255, 2.5 / 255)  # where the plain model's robust accuracy falls from ~1 to ~0


@pytest.fixture(scope="module")
def test_images():
    x, y = make_color_images(600, seed=7)
    return x.astype(np.float32) / 255.0, y.astype(np.int64)


def ours(model, x, y, attack, settings):
    attack = evaluation.attack_named(attack, settings)
    result = evaluation.evaluate(evaluation.inference_fn(model), x, y, EPS, attack=attack, settings=settings,
                                 verbose=False)
    return np.array([result["robust_accuracy"][attack.name][evaluation.eps_key(e)] for e in EPS])


def test_pgd_agrees_with_foolbox(color_classifier, test_images):
    import foolbox

    model = color_classifier[0]
    x, y = test_images
    fmodel = foolbox.TensorFlowModel(model, bounds=(0, 1))
    theirs = []
    for eps in EPS:
        attack = foolbox.attacks.LinfPGD(abs_stepsize=2.5 * eps / 40, steps=40, random_start=True)
        _, _, success = attack(fmodel, tf.constant(x), tf.constant(y), epsilons=eps)
        theirs.append(1.0 - float(np.mean(success.numpy())))
    mine = ours(model, x, y, "pgd", AttackSettings(pgd_steps=40))
    assert 0.05 < mine.max() and mine.min() < 0.95, mine  # a range where the comparison means something
    print("ours", mine, "theirs", theirs)
    np.testing.assert_allclose(mine, theirs, atol=0.02)


def test_apgd_agrees_with_art(color_classifier, test_images):
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import TensorFlowV2Classifier

    model = color_classifier[0]
    x, y = test_images
    classifier = TensorFlowV2Classifier(
        model, nb_classes=10, input_shape=x.shape[1:], clip_values=(0.0, 1.0),
        loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    theirs = []
    for eps in EPS:
        attack = AutoProjectedGradientDescent(classifier, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=100,
                                              nb_random_init=1, batch_size=600, loss_type="cross_entropy",
                                              verbose=False)
        x_adv = attack.generate(x, y=y)
        theirs.append(float(np.mean(classifier.predict(x_adv).argmax(-1) == y)))
    mine = ours(model, x, y, "apgd-ce", AttackSettings())
    assert 0.05 < mine.max() and mine.min() < 0.95, mine
    print("ours", mine, "theirs", theirs)
    np.testing.assert_allclose(mine, theirs, atol=0.02)
