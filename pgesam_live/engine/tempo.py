"""Musical time over engine time: a tempo map from beats to seconds and back."""

from __future__ import annotations

BEATS_PER_BAR = 4  # a 4/4 bar is assumed throughout


class TempoMap:
    """Beats <-> engine seconds, piecewise constant tempo. ``changes`` are (beat, bpm) sorted
    by beat; the first is beat 0 at ``origin_s``. A change never moves an earlier beat."""

    def __init__(self, bpm: float, origin_s: float = 0.0) -> None:
        self.reset(bpm, origin_s)

    def reset(self, bpm: float, origin_s: float) -> None:
        self.origin_s = origin_s
        self.changes: list[tuple[float, float]] = [(0.0, float(bpm))]
        self._starts_s = [origin_s]

    def _rebuild(self) -> None:
        starts = [self.origin_s]
        for (b0, bpm0), (b1, _) in zip(self.changes, self.changes[1:], strict=False):
            starts.append(starts[-1] + (b1 - b0) * 60.0 / bpm0)
        self._starts_s = starts

    def set(self, beat: float, bpm: float) -> float:
        """Tempo ``bpm`` from ``beat`` on (replacing a change at the same beat; later
        changes stay). A change before beat 0 (asked for during a fresh clock's pre-roll)
        takes effect at beat 0, replacing the tempo the clock was started with. Returns the
        beat it takes effect."""
        beat = max(0.0, float(beat))
        self.changes = [c for c in self.changes if c[0] != beat]
        self.changes.append((beat, float(bpm)))
        self.changes.sort(key=lambda c: c[0])
        if self.changes[0][0] > 0.0:  # a change before beat 0 cannot happen; keep beat 0
            self.changes.insert(0, (0.0, self.changes[0][1]))
        self._rebuild()
        return beat

    def remove(self, beat: float, bpm: float) -> None:
        """Undo ``set(beat, bpm)`` if that change is still there (a cancelled patch swap)."""
        if beat > 0.0 and (beat, bpm) in self.changes:
            self.changes.remove((beat, bpm))
            self._rebuild()

    def _segment_by_beat(self, beat: float) -> int:
        i = 0
        for j, (b, _) in enumerate(self.changes):
            if b <= beat:
                i = j
            else:
                break
        return i

    def beat_to_s(self, beat: float) -> float:
        i = self._segment_by_beat(beat)
        b, bpm = self.changes[i]
        return self._starts_s[i] + (beat - b) * 60.0 / bpm

    def s_to_beat(self, t_s: float) -> float:
        i = 0
        for j, s in enumerate(self._starts_s):
            if s <= t_s:
                i = j
            else:
                break
        b, bpm = self.changes[i]
        return b + (t_s - self._starts_s[i]) * bpm / 60.0

    def bpm_at(self, beat: float) -> float:
        return self.changes[self._segment_by_beat(beat)][1]

    @property
    def last_bpm(self) -> float:
        return self.changes[-1][1]


# ----------------------------------------------------------------------------- streams
