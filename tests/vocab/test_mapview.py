"""The map's region (terminal map, web page, a pad's 0..1 and MIDI CC) and the map as data."""

from __future__ import annotations

import pytest

from pgesam_live.vocab.commands import XY_LIMIT
from pgesam_live.vocab.mapview import (
    MapRegion,
    instrument_label,
    map_data,
    region_of,
)
from pgesam_live.vocab.termmap import map_text

POINTS = [{"name": "fluidr3_gm_000", "family": "keyboard", "x": -0.33, "y": -0.57},
          {"name": "musescore_general_073", "family": "flute", "x": 0.56, "y": 0.26},
          {"name": "mine", "family": "organ", "x": 0.1, "y": -0.2}]


def test_the_region_is_the_training_points_square_with_a_margin() -> None:
    r = region_of(POINTS)
    assert r.width == pytest.approx(r.height)           # square: the page's map is too
    for p in POINTS:
        assert r.contains(p["x"], p["y"])
        # a margin on every side: no point on an edge
        assert min(p["x"] - r.x_min, r.x_max - p["x"], p["y"] - r.y_min, r.y_max - p["y"]) \
            > 0.05
    assert r.width < 1.3  # zoomed in: not the nominal [-1, 1] square nor the limit's
    assert r == region_of([(p["x"], p["y"], p["family"]) for p in POINTS])  # either form


def test_regions_of_edge_cases() -> None:
    assert region_of([]) == MapRegion(-1.0, 1.0, -1.0, 1.0)  # no training points: nominal
    one = region_of([(0.2, 0.3)])
    assert one.width == pytest.approx(0.5) and one.contains(0.2, 0.3)
    far = region_of([(1.45, 1.45), (1.2, 1.3)])  # near the command table's limit: kept in
    assert far.x_max <= XY_LIMIT and far.y_max <= XY_LIMIT and far.contains(1.45, 1.45)


def test_pad_positions_map_onto_the_region_and_back() -> None:
    r = region_of(POINTS)
    assert r.to_xy(0.0, 0.0) == pytest.approx((r.x_min, r.y_min))
    assert r.to_xy(1.0, 1.0) == pytest.approx((r.x_max, r.y_max))
    for u, v in [(0.25, 0.75), (0.5, 0.5), (0.9, 0.1)]:
        assert r.to_uv(*r.to_xy(u, v)) == pytest.approx((u, v))
    assert r.to_uv(5.0, -5.0) == (1.0, 0.0)  # off the map: on its edge


def test_map_data_has_the_contracts_keys_and_what_the_page_draws() -> None:
    data = map_data("m-1234", POINTS, {"glass": (0.31, 0.12)}, (48, 72))
    assert data["model"] == "m-1234"
    assert [(p["name"], p["family"], p["x"], p["y"]) for p in data["training_points"]] == \
        [(p["name"], p["family"], p["x"], p["y"]) for p in POINTS]
    assert data["points"] == {"glass": [0.31, 0.12]}
    assert data["region"] == region_of(POINTS).as_dict()
    assert data["families"]["flute"].startswith("#") and set(data["families"]) == \
        {"keyboard", "flute", "organ"}
    assert data["pitch_range"] == [48, 72] and data["playable_range"] == [36, 84]


def test_instrument_labels_name_the_gm_program() -> None:
    assert instrument_label("fluidr3_gm_000") == "Acoustic Grand Piano (fluidr3_gm)"
    assert instrument_label("musescore_general_073") == "Flute (musescore_general)"
    assert instrument_label("mine") == "mine"
    assert instrument_label("x_999") == "x_999"
    # NSynth's own names carry no program: guitar_acoustic_010 is not a Music Box.
    assert instrument_label("guitar_acoustic_010") == "guitar_acoustic_010"
    assert instrument_label("synth_lead_synthetic_000") == "synth_lead_synthetic_000"


def test_the_terminal_map_shows_the_same_region() -> None:
    pts = [(p["x"], p["y"], p["family"]) for p in POINTS]
    r = region_of(POINTS)
    text = map_text(pts, {"point": [9.0, 9.0], "bookmarks": {"far": [1.4, -1.4]}})
    assert f"y = {r.y_max:+.2f}" in text and f"x = {r.x_min:+.2f}" in text
    assert "far (+1.40, -1.40) off the map" in text
    assert "@" in text.split("families")[0] and "off the map: @ on its edge" in text


def test_a_pads_xy_lands_on_the_engines_map_region() -> None:
    """`xy U V` (OSC /pgesam/xy, MIDI CC) spans the region the map shows, in the engine."""
    from pgesam_live.app.build import OfflineRig
    from pgesam_live.settings import Settings
    from tests.fakes import FakeSynth

    synth = FakeSynth(24000)
    rig = OfflineRig(Settings(audio="offline", cache_spill=False), synth=synth)
    try:
        region = region_of(synth.training_points)
        assert rig.engine.map_region == region
        for (u, v), want in (((0, 0), (region.x_min, region.y_min)),
                             ((1, 1), (region.x_max, region.y_max)),
                             ((0.25, 0.5), region.to_xy(0.25, 0.5))):
            rig.submit_or_fail(f"xy {u} {v}", "osc")
            rig.run_until(rig.engine.time_s() + 0.05)
            assert rig.engine.snapshot()["point"] == pytest.approx(list(want), abs=1e-4)
    finally:
        rig.close()


def test_the_readme_names_the_bundled_models_region() -> None:
    """A pad's `xy U V` spans this region; the README tells performers where it is."""
    import re
    from pathlib import Path

    from pgesam_live.model.checkpoints import (
        meta_from_payload,
        read_model_payload,
        resolve_model,
    )

    meta = meta_from_payload(read_model_payload(resolve_model("default"))[0])
    r = region_of(meta.training_points)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    stated = re.findall(r"`x (\S+) \.\. (\S+),\s+y (\S+) \.\. (\S+)` for the bundled", readme)
    assert stated, "the README no longer states the bundled model's region"
    for s in stated:
        assert tuple(float(v) for v in s) == pytest.approx(
            (r.x_min, r.x_max, r.y_min, r.y_max), abs=0.006)
