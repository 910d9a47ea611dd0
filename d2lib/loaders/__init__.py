"""Loaders for the real public benchmarks: each reads one benchmark's files into the same records.

Part of lesson ``01_video_data``: every dataset becomes a list of records in E.T. Bench's schema
(:mod:`d2lib.world.records`), validated and repaired the same way, so the model and the metrics never
see a benchmark's own layout. Lesson ``06_evaluation`` scores those records under the benchmarks'
protocols.

* :mod:`d2lib.loaders.etbench` — E.T. Bench annotation files (already records);
* :mod:`d2lib.loaders.charades` — Charades-STA's txt and TimeIT's grounding JSON (``tvg``), with the
  video durations those files lack;
* :mod:`d2lib.loaders.youcook2` — YouCook2, official or TimeIT layout (``dvc``).

Each returns ``(records, report)`` (:class:`d2lib.world.records.Loaded`); bad input raises
:class:`d2lib.world.records.DatasetError` naming the file and the record.
"""

from d2lib.world.records import DatasetError


def entry(a, keys: tuple[str, ...], where: str) -> dict:
    """One entry of a benchmark file checked before it is read: an object that has every key in ``keys``.
    Returns ``a``; otherwise raises :class:`DatasetError` naming ``where`` (the file and the entry).

    >>> entry({"duration": 3.0, "annotations": []}, ("duration", "annotations"), "yc2.json: database['x']")
    {'duration': 3.0, 'annotations': []}
    >>> entry({"duration": 3.0}, ("duration", "annotations"), "yc2.json: database['x']")
    Traceback (most recent call last):
    ...
    d2lib.world.records.DatasetError: yc2.json: database['x']: missing key 'annotations'
    """
    if not isinstance(a, dict):
        raise DatasetError(f"{where}: expected an object, got {type(a).__name__}")
    for k in keys:
        if k not in a:
            raise DatasetError(f"{where}: missing key '{k}'")
    return a
