"""`densehybrid-train curves`: learning curves read back from a run's val.csv and TensorBoard event files."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorboard")


def _write_run(root, resumed: bool = True):
    from torch.utils.tensorboard import SummaryWriter

    (root / "tensorboard").mkdir(parents=True)
    (root / "val.csv").write_text("step,miou,iou_road,iou_rider\n"
                                  "1000,0.50,0.90,0.00\n"
                                  "2000,0.60,0.95,0.10\n"
                                  "2000,0.61,0.96,0.12\n")  # a resumed run re-validated step 2000
    first = SummaryWriter(str(root / "tensorboard"))
    for step, value in ((25, 1.5), (50, 1.0), (75, 0.9)):
        first.add_scalar("loss/total", value, step)
        first.add_scalar("loss/ce", 2 * value, step)
    first.close()
    if resumed:  # a second process after a resume re-logs step 75 and goes on
        path = next((root / "tensorboard").iterdir())
        os.utime(path, (1, 1))  # the first file is the older one
        second = SummaryWriter(str(root / "tensorboard"), filename_suffix=".resumed")
        for step, value in ((75, 0.8), (100, 0.7)):
            second.add_scalar("loss/total", value, step)
        second.close()


def test_val_csv_and_losses_are_read_back_with_the_latest_value_per_step(tmp_path):
    from densehybrid_training.curves import load_run

    _write_run(tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.val_steps == [1000, 2000]
    assert run.val["miou"] == [0.50, 0.61] and run.val["iou_rider"] == [0.00, 0.12]
    assert run.loss_steps == [25, 50, 75, 100]
    assert run.loss == pytest.approx([1.5, 1.0, 0.8, 0.7])


def test_smooth_is_a_trailing_mean():
    from densehybrid_training.curves import smooth

    v = [1.0, 2.0, 3.0, 4.0, 5.0]
    expected = [np.mean(v[max(0, i - 1):i + 1]) for i in range(len(v))]  # window 2
    assert smooth(v, 2) == pytest.approx(expected)
    assert smooth(v, 1) == pytest.approx(v)


def test_cli_writes_a_png_and_reports_a_missing_run(tmp_path, capsys):
    from densehybrid_training.cli import main

    _write_run(tmp_path / "a", resumed=False)
    _write_run(tmp_path / "b", resumed=False)
    out = tmp_path / "curves.png"
    assert main(["curves", "--run", str(tmp_path / "a"), "--run", str(tmp_path / "b"), "--out", str(out),
                 "--classes", "rider"]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 400
    assert "val mIoU at steps 1000: 50.0, 2000: 61.0" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["curves", "--run", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "neither val.csv nor TensorBoard losses" in capsys.readouterr().err


def _write_joint(root):
    root.mkdir(parents=True)
    (root / "joint_diagnostics.csv").write_text(
        "step,jsd_weight,boundary_grad_share,mle_bpd,jsd_synthetic,max_softmax_synthetic,jsd_inlier,"
        "max_softmax_inlier\n"
        "25,0.03,0.002,4.0,0.40,0.90,0.46,0.95\n"
        "50,0.03,0.010,4.1,0.30,0.80,0.47,0.96\n"
        "50,0.03,0.020,4.2,0.20,0.70,0.47,0.96\n"  # a resumed run logged step 50 again: the last row wins
        "75,0.03,,4.3,0.10,0.60,0.48,0.97\n")  # an empty cell (a column an older version did not log) is NaN


def test_joint_diagnostics_are_read_back_summarised_and_drawn(tmp_path, capsys):
    from densehybrid_training.cli import main
    from densehybrid_training.curves import joint_summary, read_joint_diagnostics

    _write_joint(tmp_path / "joint")
    steps, values = read_joint_diagnostics(tmp_path / "joint" / "joint_diagnostics.csv")
    assert steps.tolist() == [25, 50, 75]
    np.testing.assert_allclose(values["jsd_synthetic"], [0.40, 0.20, 0.10])
    assert np.isnan(values["boundary_grad_share"][2])
    summary = joint_summary(values, edge=2)
    assert summary["jsd_synthetic"] == pytest.approx(((0.40 + 0.20) / 2, (0.20 + 0.10) / 2))
    assert summary["boundary_grad_share"] == pytest.approx(((0.002 + 0.020) / 2, (0.002 + 0.020) / 2))  # finite only
    assert summary["mle_bpd"] == pytest.approx((4.1, 4.25))
    out = tmp_path / "diag.png"
    assert main(["joint-curves", "--run", str(tmp_path / "joint"), "--out", str(out), "--edge", "2"]) == 0
    assert Image.open(out).size[0] > 1000
    assert "jsd_synthetic: 0.3 -> 0.15" in capsys.readouterr().out


def test_joint_curves_names_a_run_without_diagnostics_or_a_bad_file(tmp_path, capsys):
    from densehybrid_training.cli import main
    from densehybrid_training.curves import joint_main

    (tmp_path / "closed").mkdir()
    with pytest.raises(FileNotFoundError, match="joint_diagnostics.csv not found"):
        joint_main(tmp_path / "closed", tmp_path / "x.png")
    (tmp_path / "closed" / "joint_diagnostics.csv").write_text("iteration,jsd_synthetic\n1,0.3\n")
    assert main(["joint-curves", "--run", str(tmp_path / "closed"), "--out", str(tmp_path / "x.png")]) != 0
    assert "no 'step' column" in capsys.readouterr().err
    _write_joint(tmp_path / "joint")
    run = str(tmp_path / "joint")
    assert main(["joint-curves", "--run", run, "--out", str(tmp_path / "x.png"), "--edge", "0"]) != 0
    assert "edge must be >= 1" in capsys.readouterr().err
