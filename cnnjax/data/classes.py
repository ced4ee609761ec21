"""Class names kept beside a run: ``WORKDIR/class_names.json`` (a JSON list of ``K`` strings).

>>> save_class_names(workdir, dataset)     # in the training loop, once the run is known good
>>> load_class_names(workdir)              # in eval: ('cat', 'dog') or None
"""

from __future__ import annotations

import json
import os
import pathlib

__all__ = ["CLASS_NAMES_FILE", "load_class_names", "save_class_names"]

CLASS_NAMES_FILE = "class_names.json"


def save_class_names(workdir: str | os.PathLike, dataset) -> pathlib.Path | None:
    """Write ``dataset.class_names`` to ``WORKDIR/class_names.json`` atomically.

    Returns the path, or ``None`` (and writes nothing) when the data set has no names.
    """
    names = getattr(dataset, "class_names", None)
    if not names:
        return None
    path = pathlib.Path(workdir) / CLASS_NAMES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(list(names), indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def load_class_names(workdir: str | os.PathLike) -> tuple[str, ...] | None:
    """The names :func:`save_class_names` wrote, or ``None`` for a run that has none.

    Raises ``ValueError`` naming the file when it is not a JSON list of strings.
    """
    path = pathlib.Path(workdir) / CLASS_NAMES_FILE
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it or rewrite it") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path} must hold a JSON list of class-name strings")
    return tuple(names)
