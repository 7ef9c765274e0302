"""A training instrument as a point name: `at piano`, `at violin`, `at fluidr3_gm_040`."""

from __future__ import annotations

from pgesam_live.vocab.instruments import find_instrument, instrument_words

POINTS = [{"name": n, "x": float(i), "y": -float(i), "family": "x"} for i, n in enumerate(
    ["fluidr3_gm_006", "fluidr3_gm_000", "fluidr3_gm_046", "fluidr3_gm_040", "musescore_gm_000",
     "fluidr3_gm_070", "fluidr3_gm_032", "fluidr3_gm_004", "guitar_acoustic_010"])]


def test_a_word_finds_the_lowest_program_whole_words_first_then_the_first_bank() -> None:
    piano = find_instrument("piano", POINTS)
    assert piano is not None and piano.name == "fluidr3_gm_000" and (piano.x, piano.y) == (1, -1)
    assert piano.label == "Acoustic Grand Piano (fluidr3_gm)"
    assert piano.others == ("Electric Piano 1",)  # the other bank's piano is the same program
    harp = find_instrument("harp", POINTS)          # a whole word beats Harpsichord's prefix
    assert harp is not None and harp.name == "fluidr3_gm_046" and harp.others == ("Harpsichord",)
    bass = find_instrument("bass", POINTS)
    assert bass is not None and bass.name == "fluidr3_gm_032"  # not the Bassoon (70)
    harpsi = find_instrument("harpsi", POINTS)
    assert harpsi is not None and harpsi.name == "fluidr3_gm_006"
    grand = find_instrument("grand-piano", POINTS)
    assert grand is not None and grand.name == "fluidr3_gm_000" and grand.others == ()
    epiano = find_instrument("elec_piano", POINTS)
    assert epiano is not None and epiano.name == "fluidr3_gm_004"


def test_an_exact_name_wins_and_nothing_matches_nothing() -> None:
    own = find_instrument("musescore_gm_000", POINTS)
    assert own is not None and own.name == "musescore_gm_000" and own.x == 4.0
    # An NSynth-style name has no program: its own words serve.
    guitar = find_instrument("guitar", POINTS)
    assert guitar is not None and guitar.name == "guitar_acoustic_010"
    for miss in ("zzz", "", "-", "piano-zzz"):
        assert find_instrument(miss, POINTS) is None
    assert find_instrument("piano", []) is None


def test_the_words_completion_offers() -> None:
    words = instrument_words(POINTS)
    assert {"piano", "grand", "harp", "harpsichord", "violin", "bassoon"} <= set(words)
    assert words == sorted(set(words)) and all(len(w) >= 3 for w in words)
