"""SN importance analysis: softmax of the checkpoint's logits, depth order, the printed table,
the JSON and the plot (single and --compare), and the one-line errors of the CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from snvideo.analysis.sn_weights import format_table, main, sn_importance
from snvideo.engine.checkpoint import save_checkpoint
from snvideo.norm import SwitchNorm3d, is_switch_norm


def tiny_sn_net(using_bn: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv3d(3, 4, 1), SwitchNorm3d(4, using_bn=using_bn), nn.ReLU(),
                        nn.Sequential(nn.Conv3d(4, 4, 1), SwitchNorm3d(4, using_bn=using_bn)),
                        nn.Conv3d(4, 4, 1), SwitchNorm3d(4, using_bn=using_bn))
    with torch.no_grad():  # learned-looking logits, different per layer
        for m in net.modules():
            if is_switch_norm(m):
                m.mean_weight.copy_(torch.randn_like(m.mean_weight) * 2)
                m.var_weight.copy_(torch.randn_like(m.var_weight) * 2)
    return net


def save_tiny(path, using_bn=True, seed=0, work_dir="work_dirs/tiny_sn"):
    net = tiny_sn_net(using_bn, seed)
    save_checkpoint({"model": net.state_dict(), "config": {"work_dir": work_dir},
                     "classes": ["a", "b"]}, str(path))
    return net


def test_importance_is_softmax_of_logits_in_depth_order():
    net = tiny_sn_net()
    rows = sn_importance(net.state_dict())
    assert [name for name, _ in rows] == ["1", "3.1", "5"]  # module order = depth
    sn_layers = [m for m in net.modules() if is_switch_norm(m)]
    for (_, imp), layer in zip(rows, sn_layers):
        expected = layer.importance()  # the layer's own softmax, [IN, LN, BN]
        for kind in ("mean", "var"):
            assert list(imp[kind]) == ["IN", "LN", "BN"]
            for stat in ("IN", "LN", "BN"):
                assert imp[kind][stat] == pytest.approx(expected[kind][stat], abs=1e-6)
            assert sum(imp[kind].values()) == pytest.approx(1.0)


def test_hand_computed_importance_and_two_entry_layers():
    state = {"blk.norm.mean_weight": torch.tensor([0.0, 0.0, 0.0]),
             "blk.norm.var_weight": torch.tensor([0.0, 0.0, math.log(2.0)]),
             "module.head.mean_weight": torch.tensor([0.0, 0.0]),  # using_bn=False, DDP prefix
             "module.head.var_weight": torch.tensor([0.0, math.log(3.0)]),
             "other.weight": torch.ones(3)}
    rows = dict(sn_importance(state))
    assert rows["blk.norm"]["mean"] == pytest.approx({"IN": 1 / 3, "LN": 1 / 3, "BN": 1 / 3})
    assert rows["blk.norm"]["var"] == pytest.approx({"IN": 0.25, "LN": 0.25, "BN": 0.5})
    assert rows["head"]["mean"] == pytest.approx({"IN": 0.5, "LN": 0.5})
    assert rows["head"]["var"] == pytest.approx({"IN": 0.25, "LN": 0.75})
    table = format_table(list(rows.items()))
    head_line = next(line for line in table.splitlines() if line.startswith("head"))
    assert head_line.split() == ["head", "0.500", "0.500", "-", "0.250", "0.750", "-"]
    assert table.splitlines()[-1].split()[0] == "average"


def test_cli_prints_table_writes_json_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    ckpt = tmp_path / "epoch_3.pth"
    net = save_tiny(ckpt)
    png, js = tmp_path / "sn.png", tmp_path / "sn.json"
    assert main([str(ckpt), "--out", str(png), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "tiny_sn/epoch_3.pth" in out and "3.1" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    data = json.loads(js.read_text())
    layers = data["checkpoints"][0]["layers"]
    assert [entry["layer"] for entry in layers] == ["1", "3.1", "5"]
    first = [m for m in net.modules() if is_switch_norm(m)][0].importance()
    assert layers[0]["mean"]["BN"] == pytest.approx(first["mean"]["BN"], abs=1e-6)


def test_cli_compare_draws_one_column_per_checkpoint(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from PIL import Image

    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    save_tiny(a, seed=1, work_dir="work_dirs/sn")
    save_tiny(b, using_bn=False, seed=2, work_dir="work_dirs/sn_nobn")
    single, pair = tmp_path / "one.png", tmp_path / "two.png"
    assert main([str(a), "--out", str(single)]) == 0
    assert main([str(a), "--compare", str(b), "--out", str(pair), "--json",
                 str(tmp_path / "two.json")]) == 0
    out = capsys.readouterr().out
    assert "sn/a.pth" in out and "sn_nobn/b.pth" in out
    with Image.open(single) as one, Image.open(pair) as two:
        assert two.width > 1.8 * one.width and two.height == one.height
    titles = [c["title"] for c in json.loads((tmp_path / "two.json").read_text())["checkpoints"]]
    assert titles == ["sn/a.pth", "sn_nobn/b.pth"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    proc = subprocess.run([sys.executable, "-m", "snvideo.analysis.sn_weights",
                           str(tmp_path / "missing.pth")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == f"error: checkpoint not found: {tmp_path / 'missing.pth'}\n"
    no_sn = tmp_path / "plain.pth"
    save_checkpoint({"model": nn.Conv3d(3, 4, 1).state_dict()}, str(no_sn))
    assert main([str(no_sn)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no Switchable Normalization layers" in err


def test_missing_matplotlib_gives_install_hint(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "a.pth"
    save_tiny(ckpt)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main([str(ckpt), "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "pip install matplotlib" in err and not (tmp_path / "x.png").exists()
