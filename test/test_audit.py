"""The unit's audit log (core.audit) and ``bodycam audit verify``: real keys and files, the
card-holder's attacks, and the command run in-process and as the installed entry point."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ledgerutil import DEVICE, Clock, Signer, Trust, lines

from bodycam_ros import cli
from bodycam_ros.core.audit import AuditError, AuditLog, verify_audit
from bodycam_ros.core.signedlog import LogError


def codes(rep) -> set[str]:
    return {p.code for p in rep.problems}


def make_log(path: Path, signer: Signer, n: int = 6) -> AuditLog:
    log = AuditLog(path, signer, DEVICE, wall_clock=Clock())
    actions = [('config_loaded', {'config_sha256': 'ab' * 32}),
               ('key_loaded', {'source': 'pkcs11', 'key_fingerprint': '318f5bb37ebef852'}),
               ('incident_opened', {'incident_id': 'inc-1', 'reasons': ['manual']}),
               ('live_view_start', {'session_id': 's1', 'credential': 'token:3f2a9c',
                                    'client': '10.0.0.5'}),
               ('live_view_stop', {'session_id': 's1', 'seconds': 42.5}),
               ('incident_sealed', {'incident_id': 'inc-1', 'sequence': 1}),
               ('incident_uploaded', {'incident_id': 'inc-1', 'bucket': 's3://ev'}),
               ('verify_run', {'path': '/var/lib/bodycam/evidence', 'ok': True})]
    for i in range(n):
        action, details = actions[i % len(actions)]
        log.append(action, 10.0 * i, **details)
    return log


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def log(tmp_path: Path, signer: Signer) -> AuditLog:
    return make_log(tmp_path / 'audit.jsonl', signer)


def test_actions_are_logged_and_verify(log: AuditLog, signer: Signer) -> None:
    rep = verify_audit(log.path, Trust().register(signer))
    assert rep.ok, rep.problems
    assert [e.event for e in rep.entries][:4] == ['config_loaded', 'key_loaded',
                                                  'incident_opened', 'live_view_start']
    assert rep.entries[3].data['credential'] == 'token:3f2a9c'
    assert rep.head == log.head()


def test_unknown_actions_and_secrets_are_refused(log: AuditLog) -> None:
    with pytest.raises(AuditError, match="unknown audit action 'incident_deleted'"):
        log.append('incident_deleted', 1.0)
    with pytest.raises(AuditError, match="'token' looks like a secret"):
        log.append('live_view_start', 1.0, token='s3cr3t')
    with pytest.raises(AuditError, match="'secret_access_key' looks like a secret"):
        log.append('config_changed', 1.0, secret_access_key='x')
    log.append('config_changed', 1.0, token_sha256='ab' * 32, parameter='bucket')
    with pytest.raises(LogError, match='not JSON-serialisable'):
        log.append('verify_run', 1.0, path=Path('/x'))


def test_newest_entry_deleted_needs_a_witness(log: AuditLog, signer: Signer) -> None:
    trust = Trust().register(signer)
    head = log.head()
    log.path.write_bytes(b''.join(lines(log.path)[:-1]))
    assert verify_audit(log.path, trust).ok
    rep = verify_audit(log.path, trust, witness=head)
    assert codes(rep) == {'behind_witness'}


def test_middle_entry_deleted(log: AuditLog, signer: Signer) -> None:
    ls = lines(log.path)
    log.path.write_bytes(b''.join(ls[:2] + ls[3:]))
    rep = verify_audit(log.path, Trust().register(signer))
    assert codes(rep) == {'entry_gap', 'chain_broken'}
    assert {p.entry for p in rep.problems} == {4}


def test_forged_line_appended_with_another_key(log: AuditLog, signer: Signer) -> None:
    AuditLog(log.path, Signer(), DEVICE).append('incident_pruned', 99.0, incident_id='inc-1')
    rep = verify_audit(log.path, Trust().register(signer))
    assert codes(rep) == {'unregistered_signer', 'mixed_keys'}
    assert {p.entry for p in rep.problems} == {7}


def test_key_replaced_and_everything_resigned(tmp_path: Path, signer: Signer) -> None:
    forged = make_log(tmp_path / 'forged.jsonl', Signer())
    rep = verify_audit(forged.path, Trust().register(signer))
    assert codes(rep) == {'unregistered_signer'}


def test_mixed_registered_keys(log: AuditLog, signer: Signer) -> None:
    other = Signer()
    AuditLog(log.path, other, DEVICE).append('verify_run', 70.0, path='x')
    rep = verify_audit(log.path, Trust().register(signer).register(other))
    assert codes(rep) == {'mixed_keys'}
    rep = verify_audit(log.path, Trust().register(signer).register(other, 'unit-8'))
    assert codes(rep) == {'mixed_keys', 'device_mismatch'}


def test_everything_deleted(tmp_path: Path, signer: Signer) -> None:
    trust = Trust().register(signer)
    assert codes(verify_audit(tmp_path / 'audit.jsonl', trust)) == {'empty_history'}
    (tmp_path / 'audit.jsonl').write_bytes(b'')
    assert codes(verify_audit(tmp_path / 'audit.jsonl', trust)) == {'empty_history'}
    assert verify_audit(tmp_path / 'audit.jsonl', trust, allow_empty=True).ok


def test_torn_last_line_then_repaired(log: AuditLog, signer: Signer) -> None:
    trust = Trust().register(signer)
    data = log.path.read_bytes()
    log.path.write_bytes(data[:-7])
    assert codes(verify_audit(log.path, trust)) == {'torn_tail'}
    log.append('verify_run', 80.0, path='x')
    rep = verify_audit(log.path, trust)
    assert rep.ok and [w.code for w in rep.warnings] == ['repaired_tail']
    assert rep.entries[-2].event == 'log_repaired'


def test_flipped_byte(log: AuditLog, signer: Signer) -> None:
    data = bytearray(log.path.read_bytes())
    at = data.index(b'10.0.0.5')
    data[at] ^= 0x02                      # 10.0.0.5 -> 30.0.0.5: someone else watched
    log.path.write_bytes(bytes(data))
    rep = verify_audit(log.path, Trust().register(signer))
    assert codes(rep) == {'bad_signature', 'chain_broken'}
    assert [p.entry for p in rep.problems] == [4, 5]


# -- the command ---------------------------------------------------------------------------------
def run_cli(capsys, *argv: str) -> tuple[int, dict, str]:
    code = cli.main(['audit', 'verify', *argv])
    out = capsys.readouterr()
    return code, json.loads(out.out) if out.out.strip() else {}, out.err


def test_command_with_a_pinned_key(log: AuditLog, signer: Signer, capsys) -> None:
    hexkey = signer.public_key_bytes().hex()
    code, rep, _ = run_cli(capsys, str(log.path), '--pubkey', hexkey)
    assert code == 0 and rep['ok'] and rep['entries'] == 6 and rep['device_id'] == DEVICE
    code, rep, _ = run_cli(capsys, str(log.path.parent), '--pubkey', hexkey, '--compact')
    assert code == 0                                   # an evidence dir: its audit.jsonl
    code, rep, err = run_cli(capsys, str(log.path), '--pubkey', Signer().public_key_bytes().hex())
    assert code == 1 and [p['code'] for p in rep['problems']] == ['unregistered_signer']
    assert 'BAD unregistered_signer' in err
    code, _, err = run_cli(capsys, str(log.path), '--pubkey', 'abc')
    assert code == 2 and '64 hex digits' in err
    head = rep['head']
    log.path.write_bytes(b''.join(lines(log.path)[:-1]))
    code, rep, _ = run_cli(capsys, str(log.path), '--pubkey', hexkey,
                           '--witness', f'{head["seq"]}:{head["sha256"]}')
    assert code == 1 and [p['code'] for p in rep['problems']] == ['behind_witness']


def test_command_missing_log(tmp_path: Path, signer: Signer, capsys) -> None:
    hexkey = signer.public_key_bytes().hex()
    code, _, err = run_cli(capsys, str(tmp_path / 'none.jsonl'), '--pubkey', hexkey)
    assert code == 2 and 'does not exist' in err
    code, rep, _ = run_cli(capsys, str(tmp_path / 'none.jsonl'), '--pubkey', hexkey,
                           '--allow-empty')
    assert code == 0 and rep['entries'] == 0


def test_command_with_the_agency_trust_store(log: AuditLog, signer: Signer,
                                             tmp_path: Path, capsys, monkeypatch) -> None:
    trust = pytest.importorskip('bodycam_ros.core.trust')
    monkeypatch.delenv('BODYCAM_AGENCY_PASSPHRASE', raising=False)
    monkeypatch.delenv('BODYCAM_AGENCY_PASSPHRASE_FILE', raising=False)
    agency = tmp_path / 'agency'
    trust.init_agency(agency, now=1.0)
    code, rep, _ = run_cli(capsys, str(log.path), '--trust', str(agency))
    assert code == 1 and [p['code'] for p in rep['problems']] == ['unregistered_signer']
    trust.register_device(agency, signer.public_key_bytes(), DEVICE, now=2.0)
    code, rep, _ = run_cli(capsys, str(log.path), '--trust', str(agency))
    assert code == 0, rep
    trust.revoke_device(agency, DEVICE, now=3.0, reason='lost')
    code, rep, _ = run_cli(capsys, str(log.path), '--trust', str(agency))
    assert code == 1
    code, _, err = run_cli(capsys, str(log.path), '--trust', str(tmp_path / 'nowhere'))
    assert code == 2 and 'nowhere' in err


def test_installed_entry_point(log: AuditLog, signer: Signer) -> None:
    r = subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', 'audit', 'verify',
                        str(log.path), '--pubkey', signer.public_key_bytes().hex(),
                        '--compact'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)['ok'] is True
