"""Choosing what a run plays with: a patch named on the command line (validated against the
model it will play with) and the model of a patch or a journal."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pgesam_live.app.build import model_info
from pgesam_live.errors import PgesamError
from pgesam_live.settings import Settings


def _patch_model(s: Settings, patch: Any, given: str | None) -> Settings:
    """The patch's `model:` when the command line names none (`--model` wins)."""
    if given not in (None, "default") or patch.model in ("", "default"):
        return s
    from pgesam_live.model.checkpoints import resolve_model  # noqa: PLC0415

    try:
        resolve_model(patch.model)
    except PgesamError as e:
        raise PgesamError(f"{patch.path}: model: {e}") from None
    return s.replace(model=patch.model)


def apply_patch_settings(s: Settings, patch: Any, given_model: str | None) -> Settings:
    """A patch's settings over the environment's, under the command line's: its model (where
    --model names none), seed and tempo."""
    return _patch_model(s, patch, given_model).replace(seed=patch.seed, tempo_bpm=patch.tempo_bpm)


def load_checked(patch_arg: str, s: Settings, given_model: str | None) -> tuple[Any, Settings]:
    """A patch named on the command line, validated completely (pitches against the model
    it will play with) before anything starts; the settings with its model."""
    from pgesam_live.patches.files import find_patch  # noqa: PLC0415
    from pgesam_live.patches.schema import (  # noqa: PLC0415
        PatchValidationError,
        load_patch,
        load_target_errors,
    )

    path = find_patch(patch_arg, s.patch_dir)
    try:
        first = load_patch(path)
    except PatchValidationError as exc:
        # All errors at once: the pitches too, against the model the patch names where that
        # much of it reads (else the one the command line gives).
        named = _raw_patch_model(path)
        use_named = given_model in (None, "default") and named is not None
        model = named if use_named and named is not None else (given_model or s.model)
        try:
            _, info = model_info(model, s.patch_dir)
        except PgesamError:
            raise exc from None
        load_patch(path, pitch_range=tuple(info.pitch_range), known_points=info.named_points)
        raise
    s = _patch_model(s, first, given_model)
    _, info = model_info(s.model, s.patch_dir)
    patch = load_patch(path, pitch_range=tuple(info.pitch_range),
                       known_points=info.named_points)
    bad = load_target_errors(patch, s.patch_dir, pitch_range=tuple(info.pitch_range))
    if bad:  # the patches its `load` lines play later, as the instrument checks them
        raise PatchValidationError(bad)
    return patch, s


def _raw_patch_model(path: Path) -> str | None:
    """A patch's `model:` read loosely (the patch itself has errors), or None."""
    import yaml  # noqa: PLC0415

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    model = doc.get("model") if isinstance(doc, dict) else None
    return model if isinstance(model, str) and model.strip() else None


def journal_model(session: str, played: str, given: str | None, fallback: str = "default"
                   ) -> str:
    """The model to replay a journal with: --model if given, else the one its header names
    (from checkpoints/), else `fallback` (PGESAM_MODEL or the default), with a warning: the
    notes will sound different."""
    from pgesam_live.model.checkpoints import resolve_model  # noqa: PLC0415

    if given not in (None, "default"):
        return str(given)
    if not played:
        return fallback
    try:
        resolve_model(played)
        return played
    except PgesamError:
        print(f"{session}: played with model {played!r}, which is not in checkpoints/; "
              "replaying with the default model (it will sound different: pass --model PATH "
              "to use that file)", file=sys.stderr)
        return fallback
