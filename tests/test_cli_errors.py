"""Issue 16, points 4 and 8: a bad flag or input file is one line naming it (and, for a flag, its
valid range), given before anything is written. Only the command lines are used, so these run
unchanged against older versions."""

import pytest

import evaluate
import export
import train

from conftest import TINY_TRAIN_ARGS


@pytest.mark.parametrize("flag, value, valid", [
    ("--gen-ratio", "1.5", "[0, 1)"),  # crashed only after the whole co-training
    ("--eps", "-0.1", "(0, 1]"),  # crashed only at the final evaluation
    ("--batch-size", "0", ">= 1"),  # ZeroDivisionError
    ("--batch-size", "-5", ">= 1"),  # a traceback, and a config.json left behind
    ("--pgd-steps", "-3", ">= 1"),  # silently no attack
    ("--lam", "-1", ">= 0"),  # accepted
    ("--eps", "2.0", "(0, 1]"),  # accepted
])
def test_a_train_flag_out_of_range_is_one_line_before_anything_is_written(tiny_data_dir, tmp_path, capsys, flag,
                                                                          value, valid):
    out = tmp_path / "run"
    argv = TINY_TRAIN_ARGS + ["--epochs", "1", "--finetune-epochs", "1", "--data-dir", str(tiny_data_dir),
                              "--out", str(out), flag, value]
    assert train.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and valid in err[0], err
    assert not out.exists()


@pytest.fixture
def model_file(tmp_path):
    """A .keras classifier of the tiny images (untrained: only the command line's checks matter)."""
    import keras

    inputs = keras.Input((16, 16, 1))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(inputs)))
    path = tmp_path / "classifier.keras"
    model.save(path)
    return path


@pytest.mark.parametrize("args, expected", [
    (["--eps", "0.1", "-0.1"], ["--eps -0.1", "(0, 1]"]),  # an AssertionError traceback
    (["--check-masking", "--large-eps", "0"], ["--large-eps 0", "(0, 1]"]),
    (["--n-examples", "0"], ["--n-examples 0", ">= 1"]),  # blamed the model's input shape
    (["--damaged"], ["exists but cannot be read as a Keras model"]),  # said "File not found"
], ids=["eps -0.1", "large-eps 0", "n-examples 0", "damaged .keras"])
def test_evaluate_refuses_bad_input_in_one_line_before_anything_is_written(model_file, tiny_data_dir, tmp_path,
                                                                           capsys, args, expected):
    if args == ["--damaged"]:
        model_file.write_bytes(b"PK\x03\x04 not a model")
        args = []
    out = tmp_path / "evaluation"
    assert evaluate.main(["--model", str(model_file), "--dataset", "tiny", "--data-dir", str(tiny_data_dir),
                          "--n-examples", "16", "--out", str(out), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(e in err[0] for e in expected), err
    assert not out.exists()


def test_export_of_a_folder_without_config_json_is_one_line(model_file, tmp_path, capsys):
    """A classifier.keras copied out of its run, without the config.json beside it."""
    folder = model_file.parent
    assert export.main(["--model", str(folder), "--out", str(tmp_path / "exports")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json" in err[0], err
    assert not (tmp_path / "exports").exists()
