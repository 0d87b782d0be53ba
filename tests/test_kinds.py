"""The output-kind registry: every file an image gets is named, listed and checked from one table."""

from __future__ import annotations

import pytest

from campp_cli.cam.methods import list_methods
from campp_cli.errors import UsageError
from campp_cli.io.names import name_of
from campp_cli.outputs import kinds


def test_keys_list_every_file_in_the_order_they_are_written():
    # Written out by hand: the comparison, each method's heatmap and overlay, the guided maps, the maps.
    expected = ["", "_a_heatmap", "_a_overlay", "_b_heatmap", "_b_overlay", "_guided_a", "_guided_b", "_a.npy",
                "_b.npy"]
    assert kinds.keys(["a", "b"], guided=True, save_maps=True) == expected
    assert kinds.keys(["a"]) == ["", "_a_heatmap", "_a_overlay"]


def test_file_names_follow_the_figures_format_except_fixed_formats():
    assert name_of("cat", ".png", kinds.key("heatmap", "gradcam")) == "cat_gradcam_heatmap.png"
    assert name_of("cat", ".png", kinds.key("map", "gradcam")) == "cat_gradcam.npy"
    assert name_of("cat", ".jpeg", kinds.key("comparison")) == "cat.jpeg"


def test_no_two_files_of_an_image_or_a_card_share_a_name():
    keys = kinds.keys(list_methods(), guided=True, save_maps=True)
    assert len(keys) == len(set(keys))
    # Methods whose names make one file name twice ("guided"'s heatmap, "heatmap"'s guided map) are refused.
    with pytest.raises(UsageError, match="^methods guided,heatmap: two of these methods' files would have one "
                                         "name \\(NAME_guided_heatmap"):
        kinds.keys(["guided", "heatmap"], guided=True)
    assert len(kinds.keys(["guided", "heatmap"])) == 5  # without --guided they do not meet
    methods = [*list_methods(), "thumb", "photo", "heatmap", "x_heatmap"]
    assets = [kinds.report_asset("report_thumb", 3), kinds.report_asset("report_photo", 3),
              *[kinds.report_asset("report_heatmap", 3, m) for m in methods]]
    assert len(assets) == len(set(assets))


def test_a_kind_is_registered_once_and_its_pattern_checked():
    with pytest.raises(ValueError, match="already registered"):
        kinds.register_output_kind("heatmap", "{stem}_{method}_x", "again")
    with pytest.raises(ValueError, match="starts with"):
        kinds.register_output_kind("odd", "{method}_{stem}", "no stem first")
    with pytest.raises(UsageError, match="unknown file format"):
        kinds.register_output_kind("odd", "{stem}_odd", "no such format", format="gif")
    assert "odd" not in kinds.OUTPUT_KINDS


def test_a_registered_kind_is_listed_and_expected_by_skip_existing(tmp_path):
    from campp_cli.io.inputs import Job

    kinds.register_output_kind("mask", "{stem}_{method}_mask", "a test kind", wanted="masks")
    try:
        assert kinds.keys(["a"], masks=True)[-1] == "_a_mask"
        assert "_a_mask" not in kinds.keys(["a"])
        assert ("NAME_METHOD_mask.jpeg", "a test kind (with --masks)") in kinds.file_list()
        job = Job(tmp_path / "cat.png", tmp_path, "cat", ".jpeg")
        assert job.output_paths(kinds.keys(["a"], masks=True))[-1] == tmp_path / "cat_a_mask.jpeg"
    finally:
        kinds.OUTPUT_KINDS.unregister("mask")


def test_classify_help_lists_the_files_from_the_table():
    from click.testing import CliRunner

    from campp_cli.cli.main import cli

    out = CliRunner().invoke(cli, ["classify", "--help"]).output
    for name, what in kinds.file_list():
        assert name in out and what in " ".join(out.split())
