"""Property tests for the readers of the upload queue (issue 11): whatever JSON sits in a
manifest (signed or not) or in a ``state.json``, the uploader gives a queued incident or a
named quarantine and never raises. Bounded: a few seconds each.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bodycam_ros.core.upload import Reason, create_uploader, scan_spool
from bodycam_ros.core.upload.multipart import UploadState
from spoolutil import incident_files, make_incident
from uploadutil import sign_body

REASONS = {v for k, v in vars(Reason).items() if not k.startswith('_')}
BOUNDED = settings(max_examples=40, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
    st.integers(min_value=10 ** 300, max_value=10 ** 310),      # float() overflows
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(['', 'officer_down', 'holster', '2024-02-29T23:59:30Z', '1e300',
                     'NaN', '-inf', '9999999-01-01', 'video.mp4', '../x', 'A' * 64]))
json_values = st.recursive(
    scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                    st.dictionaries(st.text(max_size=10), kids, max_size=4)),
    max_leaves=12)
FIELDS = ['incident_id', 'device_id', 'start_time', 'triggers', 'files', 'sequence',
          'device_public_key', 'end_time']
field_edits = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4)


def dumps(value) -> bytes:
    return (json.dumps(value, sort_keys=True, indent=2) + '\n').encode()


def check_outcome(ev: Path, name: str) -> None:
    """The reader, then the whole uploader: a queued item or a named quarantine."""
    scan = scan_spool(ev)
    pending = [i.path.name for i in scan.pending]
    assert (name in pending) != (name in scan.invalid)
    if name in scan.invalid:
        assert scan.invalid[name].reason in REASONS
    else:
        (inc,) = scan.pending
        assert math.isfinite(inc.start_time) and inc.key_prefix('p')
    up = create_uploader(f'file://{ev.parent / "bucket"}', ev, base_backoff_s=0.01,
                         max_backoff_s=0.02)
    result = up.drain(timeout_s=30, max_failures=2)
    assert not result.failed and not result.error, result
    assert (result.verified == [name]) != (name in result.quarantined), result
    if name in result.quarantined:
        assert result.quarantined[name].split(':')[0] in REASONS
        assert (ev / 'quarantine' / f'{name}.json').is_file()


@BOUNDED
@given(value=json_values)
def test_any_signed_json_as_a_manifest_is_queued_or_quarantined_by_name(value):
    with tempfile.TemporaryDirectory() as tmp:
        ev = Path(tmp) / 'evidence'
        inc = make_incident(ev, 'inc')
        sign_body(inc, dumps(value))
        before = incident_files(inc)
        check_outcome(ev, 'inc')
        assert incident_files(inc) == before


@BOUNDED
@given(edits=field_edits, resign=st.booleans())
def test_any_field_values_in_a_real_manifest_are_queued_or_quarantined_by_name(edits, resign):
    with tempfile.TemporaryDirectory() as tmp:
        ev = Path(tmp) / 'evidence'
        inc = make_incident(ev, 'inc', start_time=1_700_000_000.0)
        manifest = json.loads((inc / 'manifest.json').read_bytes())
        manifest.update(edits)
        if resign:
            sign_body(inc, dumps(manifest))
        else:
            (inc / 'manifest.json').write_bytes(dumps(manifest))
        before = incident_files(inc)
        check_outcome(ev, 'inc')
        assert incident_files(inc) == before


@BOUNDED
@given(body=st.binary(max_size=200), sig=st.binary(max_size=80))
def test_any_bytes_as_manifest_and_signature_are_quarantined_by_name(body, sig):
    with tempfile.TemporaryDirectory() as tmp:
        ev = Path(tmp) / 'evidence'
        inc = make_incident(ev, 'inc')
        (inc / 'manifest.json').write_bytes(body)
        (inc / 'manifest.sig').write_bytes(sig)
        scan = scan_spool(ev)
        assert scan.invalid['inc'].reason in REASONS and not scan.pending


def _real_state(ev: Path, bucket: str) -> dict:
    """A state.json as a real interrupted upload leaves it (digest, parts, key)."""
    up = create_uploader(bucket, ev)
    (inc,) = up._scan().pending
    state = UploadState(up._work_dir(inc), up.backend.url)
    from bodycam_ros.core.upload.multipart import Transfer
    t = Transfer(backend=up.backend, key='k/video.mp4', path=inc.path / 'video.mp4',
                 state=state, name='video.mp4', part_size=1 << 20, multipart_threshold=1 << 20)
    t.digest()
    return json.loads(state.path.read_bytes())


state_edits = st.lists(st.tuples(
    st.sampled_from([('objects',), ('objects', 'video.mp4'), ('objects', 'video.mp4', 'digest'),
                     ('objects', 'video.mp4', 'parts'), ('objects', 'video.mp4', 'uploaded'),
                     ('objects', 'video.mp4', 'upload_id'), ('objects', 'video.mp4', 'key'),
                     ('objects', 'video.mp4', 'digest', 'parts'),
                     ('objects', 'video.mp4', 'digest', 'size'), ('careful',), ('bucket',)]),
    json_values), max_size=3)


def _set(doc, path, value):
    for k in path[:-1]:
        if not isinstance(doc, dict) or not isinstance(doc.get(k), dict):
            return
        doc = doc[k]
    if isinstance(doc, dict):
        doc[path[-1]] = value


@BOUNDED
@given(edits=state_edits, whole=st.one_of(st.none(), json_values))
def test_any_state_json_costs_at_most_a_question_to_the_store(edits, whole):
    with tempfile.TemporaryDirectory() as tmp:
        ev = Path(tmp) / 'evidence'
        bucket = f'file://{Path(tmp) / "bucket"}'
        make_incident(ev, 'inc')
        state = _real_state(ev, bucket) if whole is None else whole
        for path, value in edits:
            _set(state, path, value)
        work = ev / 'upload' / 'inc'
        work.mkdir(parents=True, exist_ok=True)
        (work / 'state.json').write_bytes(dumps(state))
        loaded = UploadState(work, bucket)
        assert isinstance(loaded.objects, dict)
        result = create_uploader(bucket, ev).drain(timeout_s=30, max_failures=2)
        assert result.ok and result.verified == ['inc'], result
