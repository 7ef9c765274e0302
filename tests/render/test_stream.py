"""Streamed notes (render/stream.py): a head rendered alone, joined to its whole note in the
frame domain without a seam, and a voice's playhead that switches from one to the other."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pgesam_live.model.synth import Synth
from pgesam_live.render.batcher import Batcher
from pgesam_live.render.cache import RenderCache
from pgesam_live.render.dsp import NOTE_PEAK, normalise_peak
from pgesam_live.render.messages import Head, Joined, Rendered, RenderRequest
from pgesam_live.render.stream import (
    LEVEL_EASE_S,
    NoteStream,
    StreamPlayhead,
    join_frame,
    level_joined,
    seam_sample,
)
from pgesam_live.render.worker import render_batch

HEAD = 16  # frames of a head on the tiny model (24 frames a note)


@pytest.fixture(scope="module", params=["parallel", "autoregressive"])
def synth(request: pytest.FixtureRequest) -> Synth:
    return Synth.untrained("tiny", device="cpu", decoder=request.param)


def requests(cache: RenderCache, notes: list[tuple[float, float, int, bool]]) -> list[Any]:
    return [RenderRequest(0.0, i, cache.key(x, y, p, 0), stream=s)
            for i, (x, y, p, s) in enumerate(notes)]


def test_a_joined_note_repeats_its_head_to_the_sample_before_the_seam(synth: Synth) -> None:
    pts, p = np.array([[0.3, -0.2], [-0.5, 0.4]], np.float32), np.array([60, 67])
    heads, head_audio, later = synth.render_heads(pts, p, 0, HEAD)
    assert later.shape == (2,) and (later >= 0).all()
    frames, whole = synth.render_notes(pts, p, 0)
    joined = synth.decode_notes(synth.stitch_frames(heads, frames, join_frame(HEAD), 8),
                                pts, p, 0)
    hop = head_audio.shape[1] // HEAD
    seam = seam_sample(HEAD, hop)
    assert seam > 0
    np.testing.assert_allclose(joined[:, :seam], head_audio[:, :seam], atol=1e-6)
    # After the crossfade it is the whole note's frames again: the same samples once the
    # phase has run on (the f0 agrees from there on, so the tail differs by a phase only).
    assert joined.shape == whole.shape
    # The autoregressive decoder's head is exactly the note's first frames.
    if not synth.transformer.cfg.parallel:
        np.testing.assert_allclose(heads.numpy(), frames[:, :HEAD].numpy(), atol=1e-5)
        np.testing.assert_allclose(joined, whole, atol=1e-5)


def test_a_parallel_head_with_every_token_as_context_is_the_whole_pass() -> None:
    """generate_head attends to the rest of the note at every stride-th step, each weighted
    stride times: with a stride of 1 that is every step, weighted once: the whole pass."""
    import torch

    sy = Synth.untrained("tiny", device="cpu", decoder="parallel")
    tr = sy.transformer
    pts, p = torch.tensor([[0.2, -0.4], [0.5, 0.1]]), torch.tensor([55, 70])
    whole = tr.generate(pts, p)
    head, context = tr.generate_head(pts, p, 10, context_stride=1)
    torch.testing.assert_close(head, whole[:, :10], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(context, whole[:, 10:], atol=1e-5, rtol=1e-5)
    # A stride past the note: the head alone, as a note of 10 frames.
    alone, none = tr.generate_head(pts, p, 10, context_stride=1000)
    torch.testing.assert_close(alone, tr.generate(pts, p, n_frames=10))
    assert none.shape[1] == 0
    # which frames a context holds: with a stride of 1 every frame after the head
    assert torch.equal(tr.context_frame_indices(10, 1), torch.arange(10, whole.shape[1]))
    _, ctx4 = tr.generate_head(pts, p, 10, context_stride=4)
    idx = tr.context_frame_indices(10, 4)
    g, n_steps = tr.cfg.frames_per_step, tr.cfg.n_steps
    s = -(-10 // g)  # the head's steps; the context's: s + 4 // 2, then every 4th
    want = [k * g + j for k in range(s + 2, n_steps, 4) for j in range(g)]
    assert idx.tolist() == want and len(idx) == ctx4.shape[1]
    assert tr.context_frame_indices(10, 1000).numel() == 0


def test_a_heads_later_level_counts_the_memorys_level_moves() -> None:
    """A head is played lower by as much as its note gets louder later; a spectral memory
    whose dynamics raise the note's end by 20 dB raises that estimate by about as much (the
    context frames read as the memory will move them), so the joined note never jumps."""
    import dataclasses

    import torch

    from pgesam_live.model.memory import Dynamics, SpectralMemory

    sy = Synth.untrained("tiny", device="cpu", decoder="parallel")
    n_t, h = sy.n_frames, sy.codec.n_harmonics
    pts, p = np.array([[0.2, -0.4]], np.float32), np.array([60])
    lo = sy.pitch_range[0]
    n_p = sy.pitch_range[1] - lo + 1
    level = torch.zeros(1, n_p, 2)
    level[0, :, 1] = 20.0  # the second half of the note 20 dB up
    mem = SpectralMemory(torch.tensor(pts), torch.zeros(1, n_p, h), torch.ones(1, n_p).bool(),
                         lo, dynamics=Dynamics(level, torch.zeros(1, n_p, 1, 1),
                                               (0, n_t // 2, n_t), (0, n_t), (0, h)),
                         n_noise_bands=sy.codec.n_noise_bands)
    plain = sy.render_heads(pts, p, 0, 8)[2][0]
    louder = Synth(dataclasses.replace(sy.bundle, memory=mem), "cpu").render_heads(
        pts, p, 0, 8)[2][0]
    assert louder > plain + 10.0, (plain, louder)


def test_stitch_refuses_a_join_outside_the_head(synth: Synth) -> None:
    pts, p = np.array([[0.0, 0.0]], np.float32), np.array([60])
    heads, _, _ = synth.render_heads(pts, p, 0, HEAD)
    frames, _ = synth.render_notes(pts, p, 0)
    with pytest.raises(Exception, match="inside the head"):
        synth.stitch_frames(heads, frames, HEAD - 2, 8)


def test_render_batch_sends_heads_first_then_joined_then_every_note(synth: Synth) -> None:
    cache = RenderCache(synth.model_id, synth.codec_name)
    batch = requests(cache, [(0.1, 0.1, 60, False), (0.2, -0.3, 62, True),
                             (0.4, 0.0, 64, True)])
    sent: list[Any] = []
    render_batch(synth, batch, sent.append, head_frames=HEAD)
    kinds = [type(m).__name__ for m in sent]
    # The streamed pair as a batch of its own, first: heads, joined notes, their renders;
    # then the other note.
    assert kinds == ["Head", "Head", "Joined", "Joined", "Rendered", "Rendered", "Rendered"]
    heads = {m.key: m.audio for m in sent if isinstance(m, Head)}
    joined = {m.key: m.audio for m in sent if isinstance(m, Joined)}
    rendered = {m.key: m.audio for m in sent if isinstance(m, Rendered)}
    assert set(heads) == set(joined) == {batch[1].key, batch[2].key}
    for k, h in heads.items():
        assert np.abs(h).max() <= NOTE_PEAK * (1 + 1e-4)  # at most its playing level
        np.testing.assert_allclose(joined[k][:len(h)], h, atol=1e-6)
        assert np.abs(joined[k]).max() <= NOTE_PEAK * 1.01  # never above it
    # What the cache gets is what an unstreamed render gives.
    pts = np.array([[r.x, r.y] for r in batch], np.float32)
    plain = normalise_peak(synth.render(pts, np.array([r.key.pitch for r in batch]), 0))
    for r, a in zip(batch, plain, strict=True):
        np.testing.assert_allclose(rendered[r.key], a, atol=1e-5)


def test_level_joined_eases_from_the_heads_gain_to_the_notes_own() -> None:
    sr = 1000
    x = np.ones(1000, np.float32) * 0.1
    x[800] = 0.4  # the note peaks after the seam
    out = level_joined(x, head_gain=5.0, seam=100, sample_rate=sr)
    assert out[50] == pytest.approx(0.5)  # the head's level before the seam
    ease = int(LEVEL_EASE_S * sr)
    assert out[100 + ease + 10] == pytest.approx(0.1 * NOTE_PEAK / 0.4)  # the note's own gain
    assert np.abs(out).max() == pytest.approx(NOTE_PEAK, rel=1e-3)
    # A note that peaks in its head keeps the head's gain throughout.
    y = np.ones(1000, np.float32) * 0.1
    np.testing.assert_allclose(level_joined(y, 5.0, 100, sr), y * 5.0)


def test_batcher_keeps_one_request_per_key_streamed_if_either_is() -> None:
    cache = RenderCache("m", "harmonic")
    k = cache.key(0.1, 0.2, 60, 0)
    b = Batcher()
    b.push(RenderRequest(1.0, 1, k))
    b.push(RenderRequest(2.0, 2, k, stream=True))
    assert len(b) == 1
    r = b.first()
    assert r.stream and r.deadline_s == 1.0


def _stream(n_head: int = 100, sr: int = 1000) -> NoteStream:
    head = np.linspace(0.1, 0.5, n_head).astype(np.float32)
    starved: list[int] = []
    s = NoteStream(head, 69, sr, on_starve=lambda: starved.append(1))
    s.starved_calls = starved  # type: ignore[attr-defined]
    return s


def test_a_stream_playhead_plays_the_head_then_the_note_without_a_step() -> None:
    s = _stream()
    ph = StreamPlayhead(s, hold=False)
    assert ph.end is None  # the note is not here yet: held open
    np.testing.assert_array_equal(ph.read(0, 50), s.head[:50])
    sr = 1000
    t = np.arange(3000) / sr
    note = (0.5 * np.sin(2 * np.pi * 440 / 8 * t)).astype(np.float32)
    note[:100] = s.head
    s.finish(note)
    assert ph.end == len(note)  # a one-shot: the whole note
    got = np.concatenate([ph.read(0, 50), ph.read(50, 100), ph.read(150, 2850)])
    np.testing.assert_array_equal(got, note)
    assert s.starved == 0


def test_a_head_that_runs_out_before_its_note_is_counted_and_silent() -> None:
    s = _stream()
    ph = StreamPlayhead(s, hold=True)
    out = ph.read(80, 40)
    np.testing.assert_array_equal(out[:20], s.head[80:])
    assert not out[20:].any()
    assert s.starved == 1 and s.starved_calls == [1]  # type: ignore[attr-defined]
    ph.read(120, 40)
    assert s.starved == 1  # once per voice


def test_a_held_stream_loops_and_releases_as_a_held_note_once_its_note_is_here() -> None:
    sr = 24000
    t = np.arange(int(3.0 * sr)) / sr
    env = np.minimum(1.0, t / 0.01) * np.where(t < 2.5, 1.0, np.exp(-(t - 2.5) * 30))
    note = (0.5 * env * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    s = NoteStream(note[:4000], 57, sr)
    ph = StreamPlayhead(s, hold=True)
    ph.read(0, 2000)
    s.finish(note)
    assert ph.end is None  # held: loops until released
    long = ph.read(0, 5 * sr)  # 5 s held, past the 3 s note
    assert np.abs(long[4 * sr:]).max() > 0.3  # still sounding: the sustain loops
    ph.release(5 * sr)
    assert ph.end is not None and ph.end > 5 * sr
    tail = ph.read(5 * sr, ph.end - 5 * sr + 100)
    assert not tail[-100:].any()


def test_a_release_before_the_note_fades_the_head_and_a_follow_is_ignored() -> None:
    s = _stream(n_head=2000)
    ph = StreamPlayhead(s, hold=True)
    assert ph.follow(10, None) is None  # type: ignore[arg-type]
    ph.release(500)
    assert ph.released_at == 500 and ph.end is not None
    out = ph.read(0, 1000)
    np.testing.assert_array_equal(out[:500], s.head[:500])
    assert not out[ph.end:].any() and abs(out[505]) < abs(s.head[505])


def test_a_follow_asked_before_the_note_came_is_made_once_it_is_here() -> None:
    """The point moves while a held streamed note still plays its head (a drag right after
    the key): the move is kept, and made at the first read after the note has come, just as
    a held note that had its note from the start moves from there."""
    from pgesam_live.render.loop import Playhead, Sustain

    sr = 24000
    t = np.arange(int(3.0 * sr)) / sr
    env = np.minimum(1.0, t / 0.01) * np.where(t < 2.5, 1.0, np.exp(-(t - 2.5) * 30))
    note = (0.5 * env * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    other = (0.3 * env * np.sign(np.sin(2 * np.pi * 220 * t))).astype(np.float32)
    there = Sustain.analyse(other, sr, 220.0, hold_s=None)
    s = NoteStream(note[:4000], 57, sr)
    ph = StreamPlayhead(s, hold=True)
    before = ph.read(0, 2000)
    assert ph.follow(1000, there) is None  # the note is not here: kept for later
    s.finish(note)
    got = np.concatenate([before, ph.read(2000, 3 * sr)])
    ref = Playhead(s.sustain)  # type: ignore[arg-type]
    ref.read(0, 2000)
    ref.follow(2000, there)
    want = np.concatenate([before, ref.read(2000, 3 * sr)])
    np.testing.assert_array_equal(got, want)
    # Now sounding the other point's square wave (peak 0.3), not the sine (peak 0.5).
    late = got[2 * sr: 2 * sr + 2400]
    assert np.abs(late).max() < 0.35 and np.mean(np.abs(late)) > 0.2
    # A one-shot or a released note keeps no move.
    one = StreamPlayhead(_stream(), hold=False)
    assert one.follow(10, there) is None and one._pending_follow is None
    rel = StreamPlayhead(_stream(), hold=True)
    rel.release(50)
    assert rel.follow(60, there) is None and rel._pending_follow is None


def test_a_stream_whose_note_will_not_come_fades_out_at_the_end_of_its_head() -> None:
    """The process died after the head (the note is rendered again, under a new stream) or
    the render failed: the voice ends with a short fade at the head's end, not a click and
    not a voice held for ever."""
    s = _stream(n_head=1000)
    ph = StreamPlayhead(s, hold=True)
    assert ph.end is None
    cache = RenderCache("m", "harmonic")
    key = cache.key(0.1, 0.1, 60, 0)
    cache.add_stream(key, s)
    cache.add_stream(key, _stream())  # the same note streamed again: the first will not come
    assert s.failed and ph.end == 1000
    out = ph.read(0, 1200)
    np.testing.assert_array_equal(out[:970], s.head[:970])
    assert abs(out[999]) < 0.05 * abs(s.head[999]) and not out[1000:].any()
    # A stream whose joined note has come is not failed by the note's arrival in the cache.
    done = _stream()
    done.finish(np.ones(3000, np.float32) * 0.1)
    cache.add_stream(key, done)
    cache.put(key, np.ones(3000, np.float32))
    assert not done.failed and cache.stream(key) is None
