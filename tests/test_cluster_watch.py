"""ClusterWatch against a real listening socket: the callback runs once, only after the port has
stopped answering for ``misses`` probes in a row."""

from __future__ import annotations

import socket
import time

from sweeper.cluster import ClusterWatch, placement_view


def test_watch_reports_a_lost_port_once():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    calls = []
    with ClusterWatch(f"127.0.0.1:{port}", lambda: calls.append(time.monotonic()), every=0.05, misses=3) as w:
        time.sleep(0.5)
        assert calls == [] and not w.lost  # answering: nothing happens
        server.close()
        end = time.monotonic() + 10
        while not calls and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.3)
    assert len(calls) == 1 and w.lost


def test_placement_view_short_columns():
    import pandas as pd

    df = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c"],
            "node_id": ["0123456789abcdef", "fedcba9876543210", None],
            "host": ["gpu-1", "gpu-2", None],
            "gpu_count": [2, 0, None],
            "gpu_name": ["NVIDIA H100", "", None],
        }
    )
    v = placement_view(df)
    assert v["node"].tolist()[:2] == ["01234567", "fedcba98"]
    assert v["gpu"].tolist()[:2] == ["2x NVIDIA H100", "-"]
    assert v["host"].tolist()[:2] == ["gpu-1", "gpu-2"]
    assert v[["node", "gpu", "host"]].iloc[2].isna().all()  # no report yet: shown as "-"
