"""Adding a post-processing method is one function and one registry entry: a toy method
registered here (and removed afterwards) shows up in the command line, the Tune widget
(its own slider, its own threshold search) and ``Segmenter.segment(method=...)``."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from widget_helpers import dock, segment, wait_idle

from napari_cellfocus.core import postprocess as pp
from napari_cellfocus.core.methods import (
    MIN_SIZE,
    POST_METHODS,
    Param,
    PostMethod,
    register_post_method,
    unregister_post_method,
)
from napari_cellfocus.widgets import tune as tune_module
from napari_cellfocus.widgets._layers import labels_name


def toy_labels(probs, level=0.5, min_size=16):
    """Cells: the face-connected components of P(cell) >= level, small ones removed."""
    lab, _ = ndimage.label(np.asarray(probs)[1] >= level)
    return pp.relabel_consecutive(pp.remove_small_objects(lab, min_size))


@pytest.fixture
def toy():
    """The toy method, registered for one test."""
    spec = register_post_method(
        PostMethod(
            key="toy",
            label="TOY: cell map above λ",
            func=toy_labels,
            params=(
                Param("level", 0.5, help="P(cell) a pixel needs.", label="λ", symbol="λ"),
                MIN_SIZE,
            ),
            summary="Cells where P(cell) >= λ.",
            grid={"level": (0.3, 0.5, 0.7, 0.9)},
        )
    )
    yield spec
    unregister_post_method("toy")
    assert "toy" not in POST_METHODS


def test_toy_method_in_the_command_line(toy, tmp_path, scene, capsys):
    """`cellfocus predict --method toy --param level=0.6` is accepted (choices and
    --param come from the registry) and writes Segmenter.segment(method="toy")'s labels."""
    import torch

    from napari_cellfocus import cli
    from napari_cellfocus.cli_predict import param_help, post_params_from_args
    from napari_cellfocus.engine.segment import Segmenter

    parser = cli.build_parser()
    args = parser.parse_args(["predict", "a.tif", "--out", "o", "--method", "toy"])
    assert args.post == "toy"
    assert param_help()["toy"] == "level, min_size"
    assert post_params_from_args([("level", "0.6")], "toy") == {"level": 0.6}
    with pytest.raises(cli.CliError, match="'toy' takes level, min_size"):
        post_params_from_args([("gamma1", "0.6")], "toy")
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, scene.image)
    out = tmp_path / "img_labels.tif"
    torch.set_num_threads(1)
    argv = ["predict", str(image), "--out", str(out), "--method", "toy"]
    argv += ["--param", "level=0.6", "--diameter", "20", "--device", "cpu"]
    assert cli.main(argv) == 0
    assert "post-processing toy level=0.6" in capsys.readouterr().err
    api = Segmenter("default", device="cpu").segment(
        scene.image, method="toy", post_params={"level": 0.6}, diameter=20
    )
    np.testing.assert_array_equal(tifffile.imread(out), api.labels)


def test_toy_method_in_segmenter(toy, tiny_model, scene):
    """Segmenter.segment(method="toy") post-processes with the toy function; an
    unknown method or parameter fails before the model runs."""
    from napari_cellfocus.engine.segment import Segmenter

    seg = Segmenter(tiny_model, device="cpu")
    result = seg.segment(scene.image, method="toy", post_params={"level": 0.7}, diameter=None)
    expected, count = toy_labels(result.probs, level=0.7)
    assert result.method == "toy" and count > 0
    np.testing.assert_array_equal(result.labels, expected)
    assert result.count == count
    with pytest.raises(ValueError, match="unknown parameter"):
        seg.segment(scene.image, method="toy", post_params={"gamma1": 0.5})
    with pytest.raises(ValueError, match="expected one of"):
        seg.segment(scene.image, method="otsu")


def test_toy_method_in_the_tune_widget(toy, viewer, qtbot, tiny_model):
    """Tune lists the toy method, shows its λ slider (and the shared Min size box) in
    place of γ/τ, relabels with it, the Segment line names it, and Optimise searches its
    one-parameter grid as core.search_thresholds does."""
    segment(viewer, qtbot, tiny_model)
    tune = dock(viewer, "Tune")
    assert tune.methods == ["map", "th", "wt", "toy"]
    assert "level" in tune.sliders and tune.sliders["level"].isHidden()
    tune.set_method("toy")
    assert not tune.sliders["level"].isHidden() and tune.sliders["gamma1"].isHidden()
    assert not tune.min_size.isHidden()
    layer = viewer.layers[labels_name("nuclei")]
    probs = tune.state.result.probs
    tune.sliders["level"].setValue(0.8)
    expected, count = toy_labels(probs, level=0.8, min_size=16)
    qtbot.waitUntil(lambda: np.array_equal(layer.data, expected), timeout=10_000)
    wait_idle(qtbot, tune)
    assert tune.state.post_method == "toy" and tune.state.count == count
    assert dock(viewer, "Segment").post_label.text().startswith("TOY λ=0.80, min size 16 px")

    tune.optimise()
    wait_idle(qtbot, tune, "search_worker")
    gt = np.asarray(viewer.layers["ground truth"].data)
    direct = pp.search_thresholds(probs, gt, method="toy", objective="pq", min_size=16)
    out = tune.last_search
    assert out.method == "toy" and out.best == pytest.approx(direct.best_params)
    np.testing.assert_allclose(out.scores, direct.scores)
    assert tune.sliders["level"].value() == pytest.approx(direct.best_params["level"])
    assert len(tune.plot.line_data()) == 1
    assert tune.search_info.text().startswith(f"Best PQ {direct.best_score:.3f} at λ = ")
    qtbot.waitUntil(
        lambda: tune.worker is None and not tune.timer.isActive() and not tune._pending,
        timeout=30_000,
    )
    assert tune_module.SEARCH_FALLBACK == "th"
