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
