"""YouCook2 → ``dvc`` records: dense captions of cooking videos (lesson ``01_video_data``).

Two layouts: the official ``youcookii_annotations_*.json`` (``{"database": {vid: {duration, subset,
annotations: [{segment, sentence}]}}}``) and TimeIT's COCO style (``{"annotations": [{image_id,
duration, segments, pure_cap}]}``). Each video becomes one ``dvc`` record with the dense-captioning
prompt :data:`DVC_PROMPT`; its spans are sorted by start with their captions (``events_sorted``).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from d2lib.loaders.checks import entry
from d2lib.world.records import DatasetError, LoadReport, Loaded, read_json, validate_records

__all__ = ["DVC_PROMPT", "load_youcook2"]

log = logging.getLogger(__name__)


DVC_PROMPT = ("Localize a series of activity events in the video, output the start and end timestamp "
              "for each event, and describe each event with sentences.")


def _dvc_record(idx: int, source: str, video: str, duration: float, spans: list, caps: list) -> dict:
    return {"idx": idx, "task": "dvc", "source": source, "video": video, "duration": duration,
            "tgt": spans, "g": caps, "q": DVC_PROMPT}


def load_youcook2(json_path: str | os.PathLike, subset: str | None = "validation", source: str = "youcook2",
                  video_template: str = "{vid}.mp4") -> Loaded:
    """YouCook2 → ``dvc`` records (spans sorted by start, captions aligned).

    Accepts the official layout ``{"database": {vid: {duration, subset, annotations: [{segment,
    sentence}]}}}`` (filtered by ``subset``; ``None`` keeps all; ``video`` =
    ``video_template.format(vid=vid)``) and TimeIT's COCO style ``{"annotations": [{image_id,
    duration, segments, pure_cap}]}`` (captions = ``pure_cap.split(". ")``; ``subset`` ignored,
    ``video`` = ``image_id``). ``idx`` = position in the file (videos sorted as in the file).
    A video whose ``annotations`` is not a list (e.g. ``null``) raises :class:`DatasetError` naming the
    file and the video id, as does any other malformed entry.
    """
    p = Path(json_path)
    data = read_json(p, "YouCook2 annotations")
    report = LoadReport(str(p))
    raw, wheres = [], []
    if isinstance(data, dict) and isinstance(data.get("database"), dict):
        for vid, v in data["database"].items():
            where = f"{p}: database[{vid!r}]"
            if subset is not None and entry(v, (), where).get("subset") != subset:
                continue
            entry(v, ("duration", "annotations"), where)
            if not isinstance(v["annotations"], list):
                raise DatasetError(f"{where}: 'annotations' must be a list of {{segment, sentence}}, "
                                   f"got {json.dumps(v['annotations'])[:60]}")
            spans, caps = [], []
            for j, a in enumerate(v["annotations"]):
                if not isinstance(a, dict) or "segment" not in a or "sentence" not in a:
                    raise DatasetError(f"{where}.annotations[{j}]: needs 'segment' and 'sentence'")
                spans.append(a["segment"])
                caps.append(a["sentence"].strip() if isinstance(a["sentence"], str) else a["sentence"])
            if not spans:
                raise DatasetError(f"{where}: no annotated segments")
            raw.append(_dvc_record(len(raw), source, video_template.format(vid=vid), v["duration"], spans, caps))
            wheres.append(where)
        if not raw:
            found = sorted({str(v.get("subset")) for v in data["database"].values() if isinstance(v, dict)})
            raise DatasetError(f"{p}: no videos in subset {subset!r} (subsets present: {', '.join(found)})")
    elif isinstance(data, dict) and isinstance(data.get("annotations"), list):
        for i, a in enumerate(data["annotations"]):
            where = f"{p}: annotations[{i}]"
            entry(a, ("image_id", "duration", "segments", "pure_cap"), where)
            caps = [c.strip() for c in str(a["pure_cap"]).split(". ")]  # TimeChat's convention
            raw.append(_dvc_record(a.get("id", i), source, a["image_id"], a["duration"], a["segments"], caps))
            wheres.append(where)
    else:
        raise DatasetError(f"{p}: expected the official YouCook2 layout ({{'database': ...}}) or TimeIT's "
                           "({'annotations': [...]})")
    records, _ = validate_records(raw, str(p), report, where_of=wheres.__getitem__)
    return Loaded(records, report.log(log))
