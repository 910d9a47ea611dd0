"""Charades-STA and TimeIT grounding files → ``tvg`` records (lesson ``01_video_data``).

Charades-STA's txt has one query per line, ``VID START END##sentence``; TimeIT (TimeChat's data) keeps
the same queries as COCO-style JSON. Neither states how long a video is, and a record needs its
``duration`` (spans are clipped to it), so durations come from a dict, a CSV (Charades' own
``Charades_v1_*.csv``) or by probing the video files (:class:`DurationLookup`). Every query becomes a
``tvg`` record whose prompt (:func:`tvg_prompt`) asks for the answer format the metrics parse.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Iterable, Mapping

from d2lib.loaders.checks import entry
from d2lib.world.records import (DatasetError, LoadReport, Loaded, _existing, _is_span, _nonempty_text,
                                 probe_duration, read_json, validate_records)

__all__ = ["Durations", "read_durations_csv", "DurationLookup", "durations_from_metas", "tvg_prompt",
           "parse_charades_line", "load_charades_txt", "load_timeit_tvg"]

log = logging.getLogger(__name__)

Durations = Mapping[str, float] | str | os.PathLike


def read_durations_csv(csv_path: str | os.PathLike) -> dict[str, float]:
    """Video durations from a CSV with an id column (``id``/``video``/``video_id``) and a duration
    column (``length`` as in Charades_v1_*.csv, or ``duration``). Errors name file:line."""
    p = _existing(csv_path, "durations CSV")
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        id_col = next((c for c in ("id", "video", "video_id") if c in cols), None)
        dur_col = next((c for c in ("length", "duration") if c in cols), None)
        if id_col is None or dur_col is None:
            raise DatasetError(f"{p}: needs an id column (id/video/video_id) and a duration column "
                               f"(length/duration); found {cols}")
        out: dict[str, float] = {}
        for row in reader:
            line = reader.line_num
            try:
                d = float(row[dur_col])
            except (TypeError, ValueError):
                raise DatasetError(f"{p}:{line}: duration {row[dur_col]!r} is not a number") from None
            if not math.isfinite(d) or d <= 0:
                raise DatasetError(f"{p}:{line}: duration {d} must be positive")
            out[row[id_col].strip()] = d
    return out


class DurationLookup:
    """Duration of a video id from a dict, a CSV file, or by probing files under a video folder.

    Ids are tried as given and without their extension (``3MSZA.mp4`` → ``3MSZA``); probing tries
    ``root/video`` (the record's video path, when given), ``root/id`` then ``root/id.mp4``.
    """

    def __init__(self, durations: Durations):
        self.root: Path | None = None
        self.table: dict[str, float] = {}
        if isinstance(durations, Mapping):
            self.table = {str(k): float(v) for k, v in durations.items()}
            self.what = "the given durations"
        else:
            p = _existing(durations, "durations source (dict, CSV file or video folder)")
            if p.is_dir():
                self.root, self.what = p, f"videos under {p}"
            else:
                self.table, self.what = read_durations_csv(p), str(p)

    def __call__(self, vid: str, video: str | None = None) -> float | None:
        for k in dict.fromkeys((vid, Path(vid).stem if Path(vid).suffix else vid)):
            if k in self.table:
                return self.table[k]
        if self.root is not None:
            cands = ([self.root / video] if video else []) + [self.root / vid, self.root / f"{vid}.mp4"]
            for cand in cands:
                if cand.is_file():
                    d = probe_duration(cand)
                    self.table[vid] = d
                    return d
        return None


def durations_from_metas(metas: Mapping[str, Mapping] | Iterable[Mapping]) -> dict[str, float]:
    """``{video stem: duration}`` from Shapes world descriptions — the ``durations`` argument for
    the split's own ``charades.txt`` (whose ids are the video file stems).

    >>> durations_from_metas([{"video": "videos/val_00001.mp4", "duration": 17}])
    {'val_00001': 17.0}
    """
    items = metas.values() if isinstance(metas, Mapping) else metas
    return {Path(m["video"]).stem: float(m["duration"]) for m in items}


def tvg_prompt(query: str) -> str:
    """The grounding prompt for a query (trailing period dropped), asking for the contract's
    answer format.

    >>> tvg_prompt("person turn a light on.")
    "Find the moment in the video described by the sentence: 'person turn a light on'. The format of your response should be: 'The event happens in <start time> - <end time>'."
    """
    q = query.strip().rstrip(".").strip()
    return (f"Find the moment in the video described by the sentence: '{q}'. The format of your "
            "response should be: 'The event happens in <start time> - <end time>'.")


def _tvg_record(idx: int, source: str, video: str, duration: float, span: list, sentence: str) -> dict:
    return {"idx": idx, "task": "tvg", "source": source, "video": video, "duration": duration,
            "tgt": span, "g": [sentence], "q": tvg_prompt(sentence)}


def parse_charades_line(line: str, where: str) -> tuple[str, float, float, str]:
    """``"VID s e##sentence"`` → ``(vid, s, e, sentence)``; malformed → :class:`DatasetError`.

    >>> parse_charades_line("3MSZA 24.3 30.4##person turn a light on.", "f:1")
    ('3MSZA', 24.3, 30.4, 'person turn a light on.')
    """
    head, sep, sentence = line.partition("##")
    if not sep:
        raise DatasetError(f"{where}: expected 'VID START END##sentence', no '##' in {line.strip()!r}")
    parts = head.split()
    if len(parts) != 3:
        raise DatasetError(f"{where}: expected 'VID START END' before '##', got {head.strip()!r}")
    try:
        s, e = float(parts[1]), float(parts[2])
    except ValueError:
        raise DatasetError(f"{where}: start/end must be numbers, got {parts[1]!r} {parts[2]!r}") from None
    if not (math.isfinite(s) and math.isfinite(e)):
        raise DatasetError(f"{where}: start/end must be finite, got {parts[1]!r} {parts[2]!r}")
    sentence = sentence.strip()
    if not sentence:
        raise DatasetError(f"{where}: empty sentence")
    return parts[0], s, e, sentence


def load_charades_txt(txt_path: str | os.PathLike, durations: Durations, source: str = "charades_sta",
                      video_template: str = "{vid}.mp4") -> Loaded:
    """Charades-STA txt (``VID START END##sentence`` per line) → ``tvg`` records.

    ``durations``: a dict ``{vid: seconds}``, a CSV (Charades ``id``/``length`` columns) or a
    folder of videos to probe. ``video`` = ``video_template.format(vid=VID)``. Ends after the
    video are clipped and counted (562 in the official test split); reversed spans swapped and
    counted; blank lines skipped and counted. ``idx`` = query number (0-based).
    """
    p = _existing(txt_path, "Charades-STA txt")
    lookup = DurationLookup(durations)
    report = LoadReport(str(p))
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DatasetError(f"{p}: not UTF-8 text (byte {e.start})") from None
    raw, wheres = [], []
    for n, line in enumerate(lines, start=1):
        where = f"{p}:{n}"
        if not line.strip():
            report.count("blank_line_skipped", where)
            continue
        vid, s, e, sentence = parse_charades_line(line, where)
        video = video_template.format(vid=vid)
        d = lookup(vid, video)
        if d is None:
            raise DatasetError(f"{where}: no duration for video {vid!r} in {lookup.what}")
        raw.append(_tvg_record(len(raw), source, video, d, [s, e], sentence))
        wheres.append(where)
    if not raw:
        raise DatasetError(f"{p}: no queries found")
    records, _ = validate_records(raw, str(p), report, where_of=wheres.__getitem__)
    return Loaded(records, report.log(log))


def load_timeit_tvg(json_path: str | os.PathLike, durations: Durations, source: str = "charades_sta",
                    video_template: str = "{vid}") -> Loaded:
    """TimeIT/TimeChat COCO-style grounding JSON → ``tvg`` records.

    Layout: ``{"annotations": [{"image_id": "3MSZA.mp4", "caption": ..., "timestamp": [s, e],
    "id": 0}, ...]}``. ``idx`` = ``id``; ``video`` = ``video_template.format(vid=image_id)``;
    durations as in :func:`load_charades_txt`.
    """
    p = Path(json_path)
    data = read_json(p, "TimeIT grounding JSON")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DatasetError(f"{p}: expected an object with an 'annotations' list (TimeIT COCO style)")
    lookup = DurationLookup(durations)
    report = LoadReport(str(p))
    raw = []
    for i, a in enumerate(data["annotations"]):
        where = f"{p}: annotations[{i}]"
        entry(a, ("image_id", "caption", "timestamp", "id"), where)
        if not _is_span(a["timestamp"]):
            raise DatasetError(f"{where}: 'timestamp' must be [start, end], got {a['timestamp']!r}")
        if not _nonempty_text(a["caption"]):
            raise DatasetError(f"{where}: empty caption {a['caption']!r}")
        video = video_template.format(vid=a["image_id"])
        d = lookup(str(a["image_id"]), video)
        if d is None:
            raise DatasetError(f"{where}: no duration for video {a['image_id']!r} in {lookup.what}")
        raw.append(_tvg_record(a["id"], source, video, d, list(a["timestamp"]), a["caption"].strip()))
    records, _ = validate_records(raw, str(p), report, where_of=lambda i: f"{p}: annotations[{i}]")
    return Loaded(records, report.log(log))
