"""Every shipped config loads, validates and builds its model."""
from __future__ import annotations

import glob
import os

import pytest

from snvideo.config import ConfigError, load_config
from snvideo.engine.builders import model_from_config

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
CONFIGS = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml"))
                 if not os.path.basename(p).startswith("_"))


def test_the_paper_grid_is_shipped():
    names = {os.path.basename(p) for p in CONFIGS}
    for norm in ("sn", "bn", "gn"):
        for per_gpu in (8, 4, 2, 1):
            assert f"i3d_r50_{norm}_k400_32x2_{per_gpu}pergpu.yaml" in names
    assert {"demo.yaml", "r3d_18_sn_k400_16x2.yaml", "resnet3d_50_sn_k400_16x2.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_and_builds(path):
    cfg = load_config(path)
    assert cfg.data.batch_size >= 1 and cfg.train.lr > 0
    model = model_from_config(cfg.model, num_classes=cfg.model.num_classes or 400)
    assert model.fc.out_features == (cfg.model.num_classes or 400)
    if os.path.basename(path) == "i3d_r50_sn_k400_32x2_1pergpu.yaml":
        assert cfg.model.norm_kwargs == {"using_bn": False}
        assert all(m.mean_weight.numel() == 2 for m in model.modules() if hasattr(m, "mean_weight"))


def test_bare_off_is_the_amp_choice_not_a_boolean(tmp_path):
    """YAML reads `amp: off` as false; for a key with named choices it means "off"."""
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  amp: off\n")
    assert load_config(str(path)).train.amp == "off"
    assert load_config(str(path), ["train.amp=off"]).train.amp == "off"
    with pytest.raises(ConfigError, match="train.amp must be one of"):
        load_config(str(path), ["train.amp=on"])
