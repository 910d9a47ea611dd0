"""d2lib.core.io: every atomic writer leaves either the old file or the new one, never a temporary."""
import json
import os

import pandas as pd
import pytest

from d2lib.core import io


def test_json_bytes_are_exactly_json_dumps(tmp_path):
    obj = {"b": [1, 2.5], "a": "é"}
    p = io.write_json(tmp_path / "x.json", obj, indent=2, sort_keys=True, newline=True)
    assert p.read_text() == json.dumps(obj, indent=2, sort_keys=True) + "\n"
    assert [q.name for q in tmp_path.iterdir()] == ["x.json"]
    assert oct(p.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    p = io.write_text(tmp_path / "m.json", "old")

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        io.write_with(p, boom)
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["m.json"]


def test_csv_and_figure_and_torch(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    df = pd.DataFrame({"step": [1, 2], "loss": [0.5, 0.25]})
    assert io.write_csv(df, tmp_path / "l.csv").read_text() == df.to_csv(index=False)
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    assert io.save_figure(fig, tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    plt.close(fig)
    t = torch.arange(3)
    assert torch.equal(torch.load(io.save_torch({"t": t}, tmp_path / "s.pt"))["t"], t)
    (tmp_path / "plain").mkdir()
    torch.save({"t": t}, tmp_path / "plain" / "s.pt")  # torch names the inner archive after the file
    assert (tmp_path / "s.pt").read_bytes() == (tmp_path / "plain" / "s.pt").read_bytes()


def test_atomic_dir_replaces_a_folder_whole_and_keeps_it_on_failure(tmp_path):
    d = tmp_path / "tok"
    with io.atomic_dir(d) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(ValueError):
        with io.atomic_dir(d) as tmp:
            (tmp / "b").write_text("2")
            raise ValueError
    assert sorted(p.name for p in d.iterdir()) == ["a"]
    with io.atomic_dir(d) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in d.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]
