"""The signed, chained log (core.signedlog) and the evidence ledger (core.ledger) on it.

Real Ed25519 keys, real files, real concurrent processes; attacks as someone holding the
storage card would make them, plus a property test over random line mutations.
"""
from __future__ import annotations

import base64
import json
import multiprocessing
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledgerutil import DEVICE, Clock, Signer, Trust, Unit, lines

from bodycam_ros.core import audit, ledger
from bodycam_ros.core.ledger import Ledger, LedgerError
from bodycam_ros.core.signedlog import (GENESIS, Head, LogError, check_witness, sha256_hex,
                                        verify_log)


def codes(rep) -> set[str]:
    return {p.code for p in rep.problems}


def verify(path: Path, trust: Trust):
    return verify_log(path.read_bytes(), ledger.KIND, trust, str(path))


@pytest.fixture
def unit(tmp_path: Path) -> Unit:
    return Unit(tmp_path / 'evidence', Signer())


def test_seals_are_chained_signed_lines(unit: Unit) -> None:
    for _ in range(3):
        unit.seal()
    raw = unit.ledger.path.read_bytes()
    entries = [json.loads(x) for x in raw.splitlines()]
    assert [e['seq'] for e in entries] == [1, 2, 3]
    assert entries[0]['prev'] == GENESIS
    assert entries[1]['prev'] == sha256_hex(raw.splitlines()[0])
    assert [e['event'] for e in entries] == ['sealed'] * 3
    assert entries[2]['data'] == {'incident_id': unit.ids[2], 'sequence': 3,
                                  'manifest_sha256': unit.manifest_sha(unit.ids[2])}
    assert entries[0]['ros_time'] == 100.0 and entries[0]['device_id'] == DEVICE
    assert base64.b64decode(entries[0]['key']) == unit.signer.public_key_bytes()
    rep = verify(unit.ledger.path, Trust().register(unit.signer))
    assert rep.ok, rep.problems
    assert rep.head == unit.ledger.head() == Head(3, sha256_hex(raw.splitlines()[2]))


def test_prune_needs_proof_of_a_verified_upload(unit: Unit, tmp_path: Path) -> None:
    unit.seal()
    iid, sha = unit.ids[0], unit.manifest_sha(unit.ids[0])
    record = unit.upload(iid, tmp_path / 'bucket')
    with pytest.raises(LedgerError, match='not verified'):
        unit.ledger.pruned_after_upload(iid, 1, sha, record | {'verified': False}, now=5.0)
    no_manifest = dict(record, objects={k: v for k, v in record['objects'].items()
                                        if k != 'manifest.json'})
    with pytest.raises(LedgerError, match='manifest.json is not among'):
        unit.ledger.pruned_after_upload(iid, 1, sha, no_manifest, now=5.0)
    with pytest.raises(LedgerError, match='not the one sealed'):
        unit.ledger.pruned_after_upload(iid, 1, '0' * 64, record, now=5.0)
    with pytest.raises(LedgerError, match='no verified_at'):
        unit.ledger.pruned_after_upload(iid, 1, sha, record | {'verified_at': None}, now=5.0)
    # sealed + uploaded; nothing was written by the refusals
    assert [e.event for e in unit.ledger.entries()] == ['sealed', 'uploaded']
    e = unit.ledger.pruned_after_upload(iid, 1, sha, record, now=5.0)
    assert e.event == 'pruned' and e.data['objects']['manifest.json']['sha256'] == sha
    assert e.data['verified_at'] == record['verified_at']


def test_ensure_sealed_heals_a_crash_once(unit: Unit) -> None:
    d = unit.seal(log=False)              # crash between the chain head and the ledger
    sha = unit.manifest_sha(d.name)
    assert unit.ledger.ensure_sealed(d.name, 1, sha, now=1.0) is not None
    assert unit.ledger.ensure_sealed(d.name, 1, sha, now=2.0) is None
    with pytest.raises(LedgerError, match='another manifest'):
        unit.ledger.ensure_sealed(d.name, 1, 'f' * 64, now=3.0)
    assert len(lines(unit.ledger.path)) == 1


def test_bad_arguments_are_named(unit: Unit) -> None:
    with pytest.raises(LedgerError, match="bad sequence 0"):
        unit.ledger.sealed('x', 0, 'a' * 64, now=1.0)
    with pytest.raises(LedgerError, match="'nothex'"):
        unit.ledger.sealed('x', 1, 'nothex', now=1.0)
    with pytest.raises(LogError, match='not finite'):
        unit.ledger.sealed('x', 1, 'a' * 64, now=float('nan'))
    with pytest.raises(LedgerError, match='not a key event'):
        unit.ledger.key_event('sealed', 1.0)


def test_torn_last_line_is_reported_then_set_aside_signed(unit: Unit) -> None:
    for _ in range(2):
        unit.seal()
    path = unit.ledger.path
    whole = path.read_bytes()
    path.write_bytes(whole[:-40])                      # power cut in the middle of entry 2
    rep = verify(path, Trust().register(unit.signer))
    assert codes(rep) == {'torn_tail'}, rep.problems
    assert rep.problems[0].line == 2
    torn = whole[len(lines(path)[0]):-40]
    unit.seal()                                        # the next append repairs, signed
    kept = path.with_name(f'{path.name}.torn-{len(lines(path)[0])}')
    assert kept.read_bytes() == torn
    entries = unit.ledger.entries()
    assert [e.event for e in entries] == ['sealed', 'log_repaired', 'sealed']
    assert entries[1].data['sha256'] == sha256_hex(torn)
    assert entries[1].data['size'] == len(torn)
    rep = verify(path, Trust().register(unit.signer))
    assert rep.ok, rep.problems
    assert [w.code for w in rep.warnings] == ['repaired_tail']


def test_tail_read_in_chunks_smaller_than_a_line(unit: Unit, monkeypatch) -> None:
    from bodycam_ros.core import signedlog
    monkeypatch.setattr(signedlog, '_TAIL_CHUNK', 7)
    for _ in range(3):
        unit.seal()
    path = unit.ledger.path
    path.write_bytes(path.read_bytes()[:-100])
    unit.seal()
    assert unit.ledger.head() == verify(path, Trust().register(unit.signer)).head
    assert [e.event for e in unit.ledger.entries()] == ['sealed'] * 2 + ['log_repaired',
                                                                          'sealed']
    assert verify(path, Trust().register(unit.signer)).ok


def test_refuses_to_chain_onto_a_line_that_is_not_an_entry(unit: Unit) -> None:
    unit.seal()
    with open(unit.ledger.path, 'ab') as f:
        f.write(b'{"rubbish": true}\n')
    with pytest.raises(LogError, match='last line is not a bodycam-ledger/1 entry'):
        unit.seal()


def test_an_audit_line_cannot_be_replayed_into_the_ledger(unit: Unit, tmp_path: Path) -> None:
    unit.seal()
    a = audit.AuditLog(tmp_path / 'audit.jsonl', unit.signer, DEVICE)
    a.append('verify_run', 1.0, path='x')
    with open(unit.ledger.path, 'ab') as f:
        f.write(a.path.read_bytes())
    rep = verify(unit.ledger.path, Trust().register(unit.signer))
    assert 'bad_entry' in codes(rep)
    assert any("'bodycam-audit/1' entry" in p.message for p in rep.problems)


def test_the_newest_line_cannot_change_even_in_base64_pad_bits(unit: Unit) -> None:
    unit.seal()
    path = unit.ledger.path
    line = path.read_bytes()
    d = json.loads(line)
    # 64 bytes -> 86 base64 digits + '=='; the last digit carries 4 unused bits that a
    # lenient decoder ignores: same signature, different bytes, no later line to break.
    sig = d['sig']
    alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
    twin = sig[:85] + alphabet[alphabet.index(sig[85]) ^ 1] + '=='
    assert base64.b64decode(twin) == base64.b64decode(sig)
    path.write_bytes(line.replace(sig.encode(), twin.encode()))
    rep = verify(path, Trust().register(unit.signer))
    assert 'bad_entry' in codes(rep) and 'canonical base64' in rep.problems[0].message


def test_key_rotation_hands_the_chain_over(unit: Unit) -> None:
    unit.seal()
    new = Signer()
    unit.ledger = unit.ledger.rotate_key(new, now=50.0, reason='scheduled')
    unit.seal(signer=new)
    trust = Trust().register(unit.signer).register(new)
    assert verify(unit.ledger.path, trust).ok
    # Without the signed handover the same two registered keys are mixed keys.
    other = Unit(unit.root.parent / 'other', unit.signer)
    other.seal()
    other.ledger = Ledger(other.ledger.path, new, DEVICE, wall_clock=other.clock)
    other.seal(signer=new)
    rep = verify(other.ledger.path, trust)
    assert codes(rep) == {'mixed_keys'}
    assert rep.problems[0].entry == 2


def _append_many(path: str, pem: bytes, n: int, who: int) -> None:
    from cryptography.hazmat.primitives import serialization
    signer = Signer(serialization.load_pem_private_key(pem, password=None))
    log = Ledger(Path(path), signer, DEVICE)
    for i in range(n):
        log.key_event('key_used', float(i), writer=who)


def test_processes_appending_at_once_never_fork_the_chain(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    signer = Signer()
    pem = signer.private.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
    path = tmp_path / 'ledger.jsonl'
    mp = multiprocessing.get_context('fork')
    procs = [mp.Process(target=_append_many, args=(str(path), pem, 25, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rep = verify(path, Trust().register(signer))
    assert rep.ok, rep.problems[:3]
    assert len(rep.entries) == 100
    assert sorted(e.data['writer'] for e in rep.entries) == sorted(list(range(4)) * 25)


def test_bucket_key() -> None:
    assert ledger.bucket_key('unit-7') == 'unit-7/ledger.jsonl'
    assert ledger.bucket_key('unit-7', 'agency/') == 'agency/unit-7/ledger.jsonl'
    assert audit.bucket_key('unit-7', 'a') == 'a/unit-7/audit.jsonl'


# -- property: any change to the lines is caught -------------------------------------------------
@lru_cache(maxsize=1)
def _sample() -> tuple[tuple[bytes, ...], Trust]:
    root = Path(tempfile.mkdtemp(prefix='ledger-prop-'))
    unit = Unit(root, Signer(), clock=Clock())
    for _ in range(4):
        unit.seal()
    record = unit.upload(unit.ids[0], root / 'bucket')
    unit.prune(unit.ids[0], record)
    unit.ledger.key_event('key_loaded', 9.0, source='file')
    return tuple(lines(unit.ledger.path)), Trust().register(unit.signer)


_mutation = st.one_of(
    st.tuples(st.just('delete'), st.integers(0, 20)),
    st.tuples(st.just('duplicate'), st.integers(0, 20)),
    st.tuples(st.just('swap'), st.integers(0, 20), st.integers(0, 20)),
    st.tuples(st.just('flip'), st.integers(0, 10_000), st.integers(0, 7)),
    st.tuples(st.just('truncate'), st.integers(0, 10_000)),
    st.tuples(st.just('insert'), st.integers(0, 20), st.binary(max_size=40)),
)


def _mutate(ls: list[bytes], m: tuple) -> list[bytes]:
    if not ls:
        return ls
    i = m[1] % len(ls)
    if m[0] == 'delete':
        return ls[:i] + ls[i + 1:]
    if m[0] == 'duplicate':
        return ls[:i + 1] + ls[i:]
    if m[0] == 'swap':
        j = m[2] % len(ls)
        ls = list(ls)
        ls[i], ls[j] = ls[j], ls[i]
        return ls
    blob = b''.join(ls)
    if m[0] == 'flip':
        p = m[1] % len(blob)
        blob = blob[:p] + bytes([blob[p] ^ (1 << m[2])]) + blob[p + 1:]
    elif m[0] == 'truncate':
        blob = blob[:m[1] % len(blob)]
    else:
        return ls[:i] + [m[2] + b'\n'] + ls[i:]
    return blob.splitlines(keepends=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_mutation, min_size=1, max_size=3))
def test_random_mutations_never_verify_unless_unchanged(muts: list[tuple]) -> None:
    original, trust = _sample()
    ls = list(original)
    for m in muts:
        ls = _mutate(ls, m)
    data, whole = b''.join(ls), b''.join(original)
    rep = verify_log(data, ledger.KIND, trust)
    if data == whole:
        assert rep.ok
        return
    # Cutting whole lines off the end is the one change the log alone cannot show (all of
    # them: an empty history, which verify_history and verify_audit refuse) ...
    assert not rep.ok or (whole.startswith(data) and data[-1:] in (b'', b'\n')), rep.problems
    # ... and an outside witness of the head catches that too.
    last = original[-1].rstrip(b'\n')
    check_witness(rep, Head(len(original), sha256_hex(last)))
    assert not rep.ok
