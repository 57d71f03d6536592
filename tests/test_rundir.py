import json

from robgan_tf import rundir
from robgan_tf.config import Config


def test_a_metrics_row_keeps_an_older_files_column_order_and_replaces_a_redone_epoch(tmp_path):
    (tmp_path / rundir.METRICS_CSV).write_text("stage,epoch,seconds,b,a\ncotrain,1,2.0,3,4\ncotrain,2,2.0,5,6\n")
    columns = ("stage", "epoch", "seconds", "a", "b", "c")
    rundir.write_metrics_row(tmp_path, {"stage": "cotrain", "epoch": 2, "seconds": 1.0, "a": 9, "c": 7}, columns)
    rundir.write_metrics_row(tmp_path, {"stage": "finetune", "epoch": 3, "seconds": 1.0, "b": 8}, columns)
    lines = (tmp_path / rundir.METRICS_CSV).read_text().splitlines()
    assert lines == ["stage,epoch,seconds,b,a,c", "cotrain,1,2.0,3,4,", "cotrain,2,1.0,,9,7", "finetune,3,1.0,8,,"]


def test_a_config_json_with_settings_missing_reads_as_a_config_with_their_defaults(tmp_path):
    # as a run older than a setting has it: beta_2 and z_dim absent, class names inside
    old = {"dataset": "mnist", "method": "robgan", "eps": 0.3, "pgd_steps": 10, "pgd_step_size": None,
           "width": 32, "g_width": 32, "depth": 3, "epochs": 3, "finetune_epochs": 3, "batch_size": 64,
           "spectral_norm": "head", "n_dis": 1, "seed": 0, "class_names": [str(i) for i in range(10)]}
    (tmp_path / rundir.CONFIG).write_text(json.dumps(old))
    config, class_names = rundir.read_config(tmp_path)
    assert isinstance(config, Config) and class_names == old["class_names"]
    assert (config.eps, config.width, config.spectral_norm) == (0.3, 32, "head")
    assert (config.beta_2, config.z_dim) == (0.999, 128)
