"""The patch folder: finding a patch by name (confined to the folder for network sources)
and listing them."""

from __future__ import annotations

from pathlib import Path

from pgesam_live.errors import PatchError


def find_patch(name: str, folder: str | Path = "patches", confined: bool = False) -> Path:
    """A patch by name in ``folder`` (``drift`` -> ``patches/drift.yaml``) or by path
    (``./drift.yaml`` for one in the working directory).

    confined: only a file inside ``folder`` (what OSC may load: a path from the network never
    reads other files); anything else is refused like a missing patch."""
    in_folder = [Path(folder) / name]
    as_given = [Path(name)]
    if not name.endswith((".yaml", ".yml")):
        in_folder += [Path(folder) / (name + ".yaml"), Path(folder) / (name + ".yml")]
        as_given += [Path(name + ".yaml")]
    # A bare name is the patch folder's first (as a journal names it); a path with a folder
    # in it (./x.yaml, sets/x.yaml, /abs/x.yaml) is taken as given first.
    bare = Path(name).name == name
    candidates = in_folder + as_given if bare else as_given + in_folder
    if not bare and Path(name).parent.name == Path(folder).name:
        # `patches/x.yaml` as the README writes it, typed in another working directory.
        leaf = Path(name).name
        candidates += [Path(folder) / leaf, Path(folder) / f"{leaf}.yaml"]
    root = Path(folder).resolve()
    for c in candidates:
        if confined and not c.resolve().is_relative_to(root):
            continue
        if c.is_file():
            return c
    if not confined and Path(name).is_dir():
        inside = ", ".join(p.name for p in list_patches(name)[:5]) or "no .yaml files"
        raise PatchError(f"{name} is a folder: give a patch file in it ({inside})")
    known = ", ".join(p.stem for p in list_patches(folder)) or "none"
    where = " (over OSC or from the web page only patches in that folder load)" if confined \
        else ""
    raise PatchError(f"no patch {name!r}; patches in {folder}/{where}: {known}")


def list_patches(folder: str | Path = "patches") -> list[Path]:
    """Patch files in ``folder``, sorted by name (for completion and `load`)."""
    f = Path(folder)
    if not f.is_dir():
        return []
    return sorted(p for p in f.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
