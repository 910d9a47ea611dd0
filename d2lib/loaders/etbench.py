"""E.T. Bench: annotation files that already hold records (lesson ``01_video_data``).

E.T. Bench ships its annotations as JSON lists of records in the very schema of
:mod:`d2lib.world.records`, either as a folder of files (``annotations/txt/``) or all in one
(``etbench_txt_v1.0.json``). Loading them is validation plus one check the files need together:
``(task, source, idx)`` is unique across the folder.
"""
from __future__ import annotations

import logging
import os

from d2lib.world.records import (DatasetError, LoadReport, Loaded, _existing, _fail, check_videos_exist,
                                 load_records_json)

__all__ = ["load_etbench"]

log = logging.getLogger(__name__)


def load_etbench(json_path: str | os.PathLike, video_root: str | os.PathLike | None = None) -> Loaded:
    """E.T. Bench annotations: one JSON list (e.g. ``etbench_txt_v1.0.json``) or a folder of them
    (e.g. ``annotations/txt/``; every ``*.json`` except ``metrics*``, sorted by name).

    With ``video_root`` every referenced video must exist there (error listing the missing ones).
    Returns ``(records, report)``; the report is logged.
    """
    p = _existing(json_path, "E.T. Bench annotations")
    report = LoadReport(str(p))
    if p.is_dir():
        files = sorted(f for f in p.glob("*.json") if not f.name.startswith("metrics"))
        if not files:
            raise DatasetError(f"{p}: folder holds no *.json annotation files")
        records: list[dict] = []
        seen: dict[tuple, str] = {}
        for f in files:
            recs, _ = load_records_json(f, report)
            for i, r in enumerate(recs):
                key = (r["task"], r["source"], r["idx"])
                if key in seen:
                    raise _fail(f"{f} [{i}]", r, f"duplicate (task, source, idx) = {key}; also in {seen[key]}")
                seen[key] = str(f)
            records += recs
    else:
        records, _ = load_records_json(p, report)
    if video_root is not None:
        check_videos_exist(records, video_root, str(p))
    return Loaded(records, report.log(log))
