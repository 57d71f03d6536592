"""Export the robust classifier as a SavedModel in TensorFlow Serving's layout.

`<root>/<model_name>/<version>/` holds the SavedModel with two signatures:
- `serving_default`: `images`, float32 (N, H, W, C) in [0, 1];
- `serving_uint8`: `images`, uint8 (N, H, W, C) raw pixels;
both returning `logits`, `probabilities`, `class_id` and `class_name`. The Keras model is kept
beside it as `assets.extra/classifier.keras` (TF Serving ignores that folder's contents).
"""

import os

import keras
import tensorflow as tf


def next_version(model_dir):
    """1 + the largest integer version folder in model_dir (1 when there is none)."""
    versions = [int(d) for d in os.listdir(model_dir) if d.isdigit()] if os.path.isdir(model_dir) else []
    return max(versions, default=0) + 1


def export_classifier(classifier, class_names, root, model_name, version=None):
    """Writes the SavedModel and returns its version folder."""
    model_dir = os.path.join(root, model_name)
    version = next_version(model_dir) if version is None else int(version)
    path = os.path.join(model_dir, str(version))
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists; pick another --version or leave it out to add a new one")
    shape = tuple(classifier.input.shape[1:])
    num_classes = classifier.output.shape[-1]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for a classifier with {num_classes} classes")

    def predict(images):
        # The network would take any size (sum pooling): check the exact shape, then the range.
        checks = [tf.debugging.assert_equal(tf.shape(images)[1:], shape, message=f"images must be (N, "
                                            f"{', '.join(map(str, shape))})"),
                  tf.debugging.assert_greater_equal(images, 0.0, message="pixels must be in [0, 1]"),
                  tf.debugging.assert_less_equal(images, 1.0, message="pixels must be in [0, 1]")]
        with tf.control_dependencies(checks):
            logits = tf.cond(tf.shape(images)[0] > 0,  # an empty batch gets empty outputs
                             lambda: tf.cast(classifier(images, training=False), tf.float32),
                             lambda: tf.zeros((0, num_classes), tf.float32))
        class_id = tf.argmax(logits, -1, output_type=tf.int32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits), "class_id": class_id,
                "class_name": tf.gather(tf.constant(class_names), class_id)}

    archive = keras.export.ExportArchive()
    archive.track(classifier)
    archive.add_endpoint("serving_default", predict,
                         input_signature=[tf.TensorSpec((None, *shape), tf.float32, name="images")])
    archive.add_endpoint("serving_uint8", lambda images: predict(tf.cast(images, tf.float32) / 255.0),
                         input_signature=[tf.TensorSpec((None, *shape), tf.uint8, name="images")])
    # TF Serving polls model_dir for integer folders: write under another name, then rename.
    tmp = os.path.join(model_dir, f"tmp-{version}")
    archive.write_out(tmp, verbose=False)
    os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
    classifier.save(os.path.join(tmp, "assets.extra", "classifier.keras"))
    os.rename(tmp, path)
    return path
