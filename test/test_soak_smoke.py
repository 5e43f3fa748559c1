"""The soak benchmark's own code (bench/soak.py) on a short (36 s) shift.

The whole graph (``bodycam run``), real moto S3 behind the cutting proxy, a kill -9 of the
recorder and a network outage, packed into 36 s: nothing the recorder opened or sealed may
be lost, no incident object may be written twice, and the bucket must verify against the
agency's trust store. No full-disk window here: an incident recorded while the disk is full
is today sealed empty (the soak's finding for the recorder), and whether one lands in a
short window is a matter of timing; the benchmark itself keeps them.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))
from bench import soak  # noqa: E402  (bench/ is beside src/, not a package on the path)


@pytest.mark.slow
def test_a_short_shift_loses_and_duplicates_nothing(tmp_path: Path):
    plan = soak.Plan(minutes=0.6, seed=3, trigger_every=(5.0, 8.0), hold=(2.0, 4.0),
                     draw_p=0.3, kill_every=(12.0, 16.0), outage_every=(10.0, 14.0),
                     outage_len=(4.0, 6.0), full_every=(1e9, 1e9), full_len=(0.0, 0.0),
                     sample_s=2.0, warmup_s=8.0, disk_mib=48)
    said: list[str] = []

    rep = soak.run(plan, tmp_path, echo=said.append)

    summary = soak.table(rep) + '\n' + '\n'.join(said)
    assert rep.counts['kills'] >= 1 and rep.counts['outages'] >= 1, summary
    assert rep.counts['sealed'] >= 2, summary
    assert rep.lost == [], summary
    assert rep.duplicated == {}, summary
    assert rep.bucket_ok, summary
    assert rep.counts['in_bucket_verified'] == rep.counts['sealed'], summary
    assert set(rep.nodes) >= set(soak.NODES), summary
