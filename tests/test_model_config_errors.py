"""Values that only fail when the model is built: GroupNorm's group count and the one-line
errors (exit status 2) naming model.norm / model.norm_kwargs / model.arch_kwargs."""
from __future__ import annotations

import pytest
from torch import nn

import train as train_script
from snvideo.config import ConfigError, ModelConfig
from snvideo.engine.builders import model_from_config
from snvideo.norm import build_norm
from test_train import write_config

NARROW = {"widen_factor": 0.25, "no_max_pool": True}  # a 16-channel stem


def test_default_group_count_adapts_to_narrow_layers():
    assert build_norm("gn", 64).num_groups == 32
    assert build_norm("gn", 16).num_groups == 16           # 32 does not divide 16
    assert build_norm("gn", 48).num_groups == 24           # largest divisor of 48 not above 32
    model = model_from_config(ModelConfig(arch="resnet3d_10", norm="gn", arch_kwargs=NARROW), 10)
    groups = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert groups and all(m.num_channels % m.num_groups == 0 and m.num_groups <= 32
                          for m in groups)


@pytest.mark.parametrize("model_cfg,key", [
    (ModelConfig(arch="resnet3d_10", norm="gn", norm_kwargs={"num_groups": 5},
                 arch_kwargs=NARROW), "model.norm_kwargs.num_groups"),
    (ModelConfig(arch="resnet3d_10", norm="sn", norm_kwargs={"no_such_option": 1}),
     "model.norm_kwargs"),
    (ModelConfig(arch="resnet3d_10", norm="bnx"), "model.norm"),
    (ModelConfig(arch="resnet3d_10", arch_kwargs={"no_such_option": 1}), "model.arch_kwargs"),
    (ModelConfig(arch="resnet3d_9"), "model.arch"),
])
def test_build_time_errors_name_their_key(model_cfg, key):
    with pytest.raises(ConfigError) as info:
        model_from_config(model_cfg, 10)
    assert str(info.value).startswith(f"{key}: ") and "\n" not in str(info.value)


def test_train_py_exits_2_with_one_line(tmp_path, tiny_data, capsys):  # noqa: F811
    cfg = write_config(tmp_path, tiny_data,
                       model={"norm": "gn", "norm_kwargs": {"num_groups": 5}})
    assert train_script.main(["--config", cfg]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: model.norm_kwargs.num_groups: ")
