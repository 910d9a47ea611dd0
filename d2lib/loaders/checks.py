"""Checks shared by the benchmark loaders: an entry of an annotation file is an object with the keys it needs.

Part of lesson ``01_video_data`` (the real benchmarks become records); a bad entry raises
:class:`d2lib.world.records.DatasetError` naming the file and the entry.
"""
from __future__ import annotations

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


__all__ = ["entry"]
