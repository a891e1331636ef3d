"""python -m snvideo.export: ONNX (checked with onnxruntime), torch.export and TorchScript files
that give PyTorch's eval logits for an SN model, with the batch dynamic, normalization in the
graph on request, the label map and input description beside them, and one-line errors."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from snvideo import export
from snvideo.config import load_config
from snvideo.data import normalize_views
from snvideo.engine.builders import model_from_config
from snvideo.engine.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
VIDEO = REPO / "tests" / "data" / "real_world" / "cut_source.mp4"
OVERRIDES = ["data.clip_len=8", "data.crop_size=32", "data.short_side=40"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The demo's SN model (configs/demo.yaml) at 8x32x32 with non-trivial running statistics
    and importance weights, as train.py saves it."""
    cfg = load_config(str(REPO / "configs" / "demo.yaml"), OVERRIDES)
    torch.manual_seed(0)
    model = model_from_config(cfg.model, 3)
    for module in model.modules():
        if getattr(module, "running_mean", None) is not None:
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
        for name in ("mean_weight", "var_weight"):
            if hasattr(module, name):
                getattr(module, name).data.normal_(0, 1)
    path = tmp_path_factory.mktemp("export") / "best.pt"
    save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(), "classes": ["a", "b", "c"]},
                    str(path))
    return path, model.eval()


def run_export(capsys, *argv) -> tuple[int, str, str]:
    status = export.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def differences(out: str) -> list[float]:
    return [float(v) for v in re.findall(r"max \|exported - PyTorch eval\| on .*?: (\S+) ", out)]


@pytest.mark.slow
@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("exported", ".pt2"), ("torchscript", ".pt")])
def test_exported_file_gives_the_eval_logits(tmp_path, checkpoint, capsys, fmt, suffix):
    path, model = checkpoint
    out = tmp_path / f"model{suffix}"
    status, stdout, err = run_export(capsys, path, "--format", fmt, "--out", out, "--video", VIDEO)
    assert status == 0, err
    assert len(differences(stdout)) == 2 and max(differences(stdout)) < 1e-5, stdout
    assert (tmp_path / f"model{suffix}.labels.txt").read_text().split() == ["a", "b", "c"]
    spec = json.loads((tmp_path / f"model{suffix}.json").read_text())
    assert spec["shape"] == ["batch", 3, 8, 32, 32] and spec["dtype"] == "float32"
    assert spec["frames"] == 8 and spec["crop_size"] == 32 and spec["classes"] == ["a", "b", "c"]
    for batch in (1, 4):  # the batch is dynamic
        clips = torch.randn(batch, 3, 8, 32, 32)
        got = export.run_exported(fmt, str(out), clips)
        with torch.no_grad():
            torch.testing.assert_close(got, model(clips), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_preprocess_in_the_graph_and_dynamic_frames(tmp_path, checkpoint, capsys):
    path, model = checkpoint
    out = tmp_path / "model.onnx"
    status, stdout, err = run_export(capsys, path, "--format", "onnx", "--out", out, "--preprocess",
                                     "--dynamic-thw")
    assert status == 0, err
    spec = json.loads((tmp_path / "model.onnx.json").read_text())
    assert spec["dtype"] == "uint8" and spec["shape"] == ["batch", 3, "frames", "height", "width"]
    clips = torch.randint(0, 256, (2, 3, 12, 40, 48), dtype=torch.uint8)  # other T, H, W
    got = export.run_exported("onnx", str(out), clips)
    with torch.no_grad():
        want = model(normalize_views(clips))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


class _DataDependent(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x  # a branch on a value: no exporter takes it


def test_a_layer_that_cannot_be_exported_is_named(tmp_path):
    net = nn.Sequential(nn.Conv3d(3, 4, 1), nn.Sequential(nn.ReLU(), _DataDependent()), nn.Flatten())
    with pytest.raises(export.ExportError, match=r"layer '1\.1' \(_DataDependent\)"):
        export.export_model(net.eval(), torch.randn(1, 3, 2, 4, 4), "exported", str(tmp_path / "m.pt2"))


def test_bad_arguments_exit_2_with_one_line(tmp_path, checkpoint, capsys):
    path, _ = checkpoint
    for argv, message in (
            ([tmp_path / "none.pt", "--format", "onnx", "--out", tmp_path / "m.onnx"], "checkpoint not found"),
            ([path, "--format", "onnx", "--out", tmp_path / "m.onnx", "--opset", "16"], "opset 17 or later"),
            ([path, "--format", "exported", "--out", tmp_path / "m.bin"], "end in .pt2")):
        status, _, err = run_export(capsys, *argv)
        assert status == 2 and err.count("\n") == 1 and message in err, err


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["bn", "gn", "in", "ln", "sn"])
def test_every_norm_exports(tmp_path, norm):
    """Each norm the project builds, in eval mode, through torch.export (the ONNX exporter's
    front end) and ONNX Runtime."""
    from snvideo.models import build_model

    torch.manual_seed(0)
    net = build_model("resnet3d_10", 4, norm=norm, widen_factor=0.25, no_max_pool=True,
                      conv1_t_size=3).eval()
    example = torch.randn(1, 3, 8, 32, 32)  # res5 keeps 4 positions (IN needs more than one)
    out = tmp_path / "m.onnx"
    export.export_model(net, example, "onnx", str(out))
    clips = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(export.run_exported("onnx", str(out), clips), net(clips),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("arch,norm", [("r3d_18", "bn"), ("r3d_18", "gn"), ("r3d_18", "sn"),
                                       ("i3d_r50", "bn"), ("i3d_r50", "gn"), ("i3d_r50", "sn")])
def test_the_large_backbones_export(tmp_path, arch, norm):
    """r3d_18 and i3d_r50 (full width, small clips) through torch.export: the exported program
    gives PyTorch's eval logits within 1e-4 relative at batch sizes 1 and 3."""
    from snvideo.models import build_model

    torch.manual_seed(0)
    net = build_model(arch, 5, norm=norm).eval()
    out = tmp_path / "m.pt2"
    export.export_model(net, torch.randn(1, 3, 8, 32, 32), "exported", str(out))
    program = torch.export.load(str(out)).module()
    for batch in (1, 3):
        clips = torch.randn(batch, 3, 8, 32, 32)
        with torch.no_grad():
            want = net(clips)
            got = program(clips)
        assert (got - want).abs().max() <= 1e-4 * want.abs().max(), (arch, norm, batch)
