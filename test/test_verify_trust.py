"""``bodycam verify --trust``: real recorder incidents (age-encrypted, signed by a key outside
the evidence, chained in the ledger), checked on the unit, in a ``file://`` bucket the real
``bodycam upload`` filled, and in S3 (moto). Each attack of issue 10's first list passed the
old ``bodycam verify`` with exit 0 (see the report of that change); here each fails, naming
the incident."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bodycam_ros.core import evidence as ev
from bodycam_ros.core import keys, trust
from conftest import ROOT

DEVICE = 'unit-t'


def cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})


def verify(target: Path | str, *args: str, env: dict[str, str] | None = None
           ) -> tuple[int, dict | None, str]:
    r = cli('verify', str(target), '--json', *args, env=env)
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else None, r.stderr


def make_unit(where: Path, incidents: int = 3) -> Path:
    """A registered unit that recorded ``incidents`` encrypted incidents through the real
    Recorder (test_evidence_trust.unit); returns ``where`` (agency/, keys/, ev/)."""
    from test_evidence_trust import record, unit
    store, rec, signer = unit(where)
    trust.register_device(where / 'agency', signer.public_key_bytes(), DEVICE, time.time(),
                          passphrase=b'')
    rec.start()
    record(rec, incidents)
    rec.close()
    assert len(store.sealed()) == incidents, rec.events()
    return where


@pytest.fixture(scope='module')
def made(tmp_path_factory) -> Path:
    return make_unit(tmp_path_factory.mktemp('unit'))


@pytest.fixture
def u(made: Path, tmp_path: Path) -> Path:
    """A private copy of the module's unit (the attacks change it)."""
    shutil.copytree(made, tmp_path / 'u', symlinks=True)
    return tmp_path / 'u'


def ids(u: Path) -> list[str]:
    """Incident ids in sequence order."""
    seq = {d.name: json.loads((d / ev.MANIFEST).read_text())['sequence']
           for d in (u / 'ev' / 'spool').iterdir()}
    return sorted(seq, key=seq.get)


def upload(u: Path, bucket: Path) -> None:
    r = cli('upload', '--once', '--quiet', '--bucket', f'file://{bucket}', '--evidence-dir',
            str(u / 'ev'), '--key-dir', str(u / 'keys'))
    assert r.returncode == 0, r.stdout + r.stderr


def bucket_dir(bucket: Path, incident: str) -> Path:
    (d,) = bucket.glob(f'{DEVICE}/*/{incident}')
    return d


def resign(d: Path, key, **changes) -> str:
    """Rewrite an incident's manifest with ``changes`` and sign it with ``key`` (an attacker
    holding some Ed25519 key); returns the new manifest's SHA-256."""
    m = json.loads((d / ev.MANIFEST).read_text())
    m.update(changes)
    m['device_public_key'] = ev.public_key_field(key)
    return ev.sign_into(d, m, key)


def other_key(path: Path) -> ev.DeviceKey:
    return ev.DeviceKey.load_or_create(path)


def flip(path: Path, offset: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def failed_naming(code: int, err: str, *names: str) -> bool:
    return code == 1 and all(n in err for n in names)


# -- the unit's own evidence directory -----------------------------------------------------------
def test_three_incidents_pass_on_the_unit_and_nothing_without_a_trust_store(u: Path):
    code, out, err = verify(u / 'ev', '--trust', str(u / 'agency'))
    assert code == 0, err
    assert out['ok'] and out['trusted'] and out['incidents'] == 3
    (dev,) = out['devices']
    assert dev['device_id'] == DEVICE and dev['history']['ok'] and dev['audit']['ok']
    assert all(i['trusted'] and i['signer_device'] == DEVICE for i in dev['incidents'])
    # Integrity alone is never "ok": exit 1, trusted false, saying a trust store is needed.
    code, out, err = verify(u / 'ev')
    assert code == 1 and out['trusted'] is False and out['integrity_ok'] and not out['ok']
    assert 'trust store is needed' in err
    r = cli('verify', str(u / 'ev'))                      # the human summary says so too
    assert r.returncode == 1 and 'untrusted' in r.stdout and 'OK' not in r.stdout.split()


def test_attack_newest_deleted_and_chain_head_rewritten(u: Path):
    a, b, c = ids(u)
    shutil.rmtree(u / 'ev' / 'spool' / c)
    m = (u / 'ev' / 'spool' / b / ev.MANIFEST).read_bytes()
    ev.ChainHead(ev.sha256_bytes(m), 2, b).write(u / 'ev' / ev.CHAIN_HEAD)
    code, _, err = verify(u / 'ev', '--trust', str(u / 'agency'))
    assert failed_naming(code, err, c, 'missing_incident'), err


def test_attack_middle_deleted_and_a_prune_line_appended(u: Path):
    a, b, c = ids(u)
    m = (u / 'ev' / 'spool' / b / ev.MANIFEST).read_bytes()
    shutil.rmtree(u / 'ev' / 'spool' / b)
    with open(u / 'ev' / ev.PRUNED_LOG, 'a') as f:
        f.write(json.dumps({'incident_id': b, 'sequence': 2,
                            'manifest_sha256': ev.sha256_bytes(m),
                            'pruned_time': time.time()}) + '\n')
    code, _, err = verify(u / 'ev', '--trust', str(u / 'agency'))
    assert failed_naming(code, err, b, 'without a signed prune record'), err


def test_attack_video_and_key_replaced_then_resigned_and_rechained(u: Path, tmp_path: Path):
    """The attacker re-signs every incident with its own key, re-chains them and puts its
    public key where the old verify looked (keys/ beside the evidence)."""
    from bodycam_ros.core.encryption import AgeWriter, decode_recipient, scan
    fake = other_key(u / 'ev' / 'keys')                 # keys/device_ed25519.pub: the fake
    spool = u / 'ev' / 'spool'
    recipient = decode_recipient((u / 'agency_recipient.txt').read_text())
    b = ids(u)[1]
    video = spool / b / 'video.mp4.age'
    video.unlink()
    with AgeWriter(video, [recipient]) as w:
        w.write(b'\x00' * 100_000)                      # another "video", properly encrypted
    prev = ev.GENESIS
    for i in ids(u):
        m = json.loads((spool / i / ev.MANIFEST).read_text())
        files = m['files']
        for name in files:
            files[name]['sha256'], files[name]['size'] = ev.sha256_file(spool / i / name)
            if name == 'video.mp4.age' and i == b:
                files[name]['chunks'] = scan(video).full_chunks + 1
                files[name]['plaintext'] = {'name': 'video.mp4', 'size': 100_000,
                                            'sha256': ev.sha256_bytes(b'\x00' * 100_000)}
        prev = resign(spool / i, fake, files=files, prev_manifest_sha256=prev,
                      device_key_sha256=fake.fingerprint)
    ev.ChainHead(prev, 3, ids(u)[-1]).write(u / 'ev' / ev.CHAIN_HEAD)
    code, out, err = verify(u / 'ev', '--trust', str(u / 'agency'))
    assert code == 1 and not out['ok'], err
    for i in ids(u):
        assert failed_naming(code, err, f'{i}: signer: key {fake.fingerprint[:16]} is not '
                             'registered'), err
    assert not any(x['trusted'] for x in out['devices'][0]['incidents'])


def test_attack_keys_deleted_and_one_incident_resigned_with_another_key(u: Path):
    a, b, c = ids(u)
    spool = u / 'ev' / 'spool'
    stranger = other_key(u / 'stranger')
    ev.ChainHead(resign(spool / c, stranger), 3, c).write(u / 'ev' / ev.CHAIN_HEAD)
    code, _, err = verify(u / 'ev', '--trust', str(u / 'agency'))
    assert failed_naming(code, err, c, 'not registered', 'keys mixed in one chain'), err
    # The other key registered in the same agency, but to another device: still mixed.
    trust.register_device(u / 'agency', stranger.public_raw, 'unit-x', time.time(),
                          passphrase=b'')
    code, _, err = verify(u / 'ev', '--trust', str(u / 'agency'))
    assert failed_naming(code, err, c, "registered to device 'unit-x'",
                         'keys mixed in one chain'), err


def test_attack_everything_deleted(u: Path):
    agency = str(u / 'agency')
    from bodycam_ros.core.ledger import Ledger, ledger_path
    signer = keys.open_signer(u / 'keys')
    seen = Ledger(ledger_path(u / 'ev'), signer, DEVICE).head()
    for d in (u / 'ev' / 'spool').iterdir():
        shutil.rmtree(d)
    (u / 'ev' / ev.CHAIN_HEAD).unlink()
    code, _, err = verify(u / 'ev', '--trust', agency)
    assert code == 1 and all(f'{i}' in err for i in ids_from_ledger(u)), err
    # The ledger and audit log gone too: an empty history fails without --allow-empty...
    (u / 'ev' / 'ledger.jsonl').unlink()
    (u / 'ev' / 'audit.jsonl').unlink()
    code, _, err = verify(u / 'ev', '--trust', agency)
    assert failed_naming(code, err, 'empty_history'), err
    # ...passes with it (only an outside witness can tell), and fails against the witness.
    code, _, err = verify(u / 'ev', '--trust', agency, '--allow-empty')
    assert code == 0, err
    code, _, err = verify(u / 'ev', '--trust', agency, '--allow-empty', '--witness',
                          f'{seen.seq}:{seen.sha256}')
    assert failed_naming(code, err, 'behind_witness'), err


def ids_from_ledger(u: Path) -> list[str]:
    return [json.loads(line)['data']['incident_id']
            for line in (u / 'ev' / 'ledger.jsonl').read_text().splitlines()
            if json.loads(line)['event'] in ('sealed', 'recovered')]


def test_a_sealed_complete_file_that_scans_as_torn_fails(u: Path):
    """A unit (buggy, or holding its key) seals a cut age file as complete: without the
    agency key, verify sees the missing final chunk."""
    c = ids(u)[-1]
    d = u / 'ev' / 'spool' / c
    video = d / 'video.mp4.age'
    from bodycam_ros.core.encryption import scan
    lay = scan(video)
    cut = lay.size - lay.tail_bytes + 5                 # 5 bytes of the final chunk
    video.write_bytes(video.read_bytes()[:cut])
    m = json.loads((d / ev.MANIFEST).read_text())
    m['files']['video.mp4.age'].update(zip(('sha256', 'size'), ev.sha256_file(video)))
    signer = keys.open_signer(u / 'keys')
    ev.sign_into(d, m, signer)
    store = trust.TrustStore.load(u / 'agency')
    chk = ev.check_incident(d, None, trust=store)
    assert chk.trusted and chk.signature_valid
    assert any('sealed complete but scans as torn' in e for e in chk.errors), chk.errors
    code, _, err = verify(u / 'ev', '--trust', str(u / 'agency'))
    assert failed_naming(code, err, c, 'scans as torn'), err


def test_verify_runs_are_audited_on_the_unit(u: Path):
    before = (u / 'ev' / 'audit.jsonl').read_bytes().count(b'\n')
    r = cli('verify', str(u / 'ev'), '--trust', str(u / 'agency'), '--key-dir',
            str(u / 'keys'))
    assert r.returncode == 0, r.stderr
    assert 'audited as verify_run' in r.stderr
    lines = (u / 'ev' / 'audit.jsonl').read_text().splitlines()
    assert len(lines) == before + 1
    entry = json.loads(lines[-1])
    assert entry['event'] == 'verify_run' and entry['data']['ok'] is True
    assert entry['data']['incidents'] == 3 and entry['data']['target'] == str(u / 'ev')
    r = cli('audit', 'verify', str(u / 'ev'), '--trust', str(u / 'agency'))
    assert r.returncode == 0, r.stdout + r.stderr


# -- the bucket ----------------------------------------------------------------------------------
@pytest.fixture
def bucket(u: Path) -> Path:
    upload(u, u / 'bucket')
    return u / 'bucket'


def test_bucket_passes_on_three_incidents_from_one_device(u: Path, bucket: Path):
    code, out, err = verify(f'file://{bucket}', '--trust', str(u / 'agency'))
    assert code == 0, err
    (dev,) = out['devices']
    assert dev['device_id'] == DEVICE and len(dev['incidents']) == 3
    assert dev['history']['counts']['uploaded'] == 3 and dev['audit']['ok']


def test_bucket_middle_incident_deleted(u: Path, bucket: Path):
    b = ids(u)[1]
    shutil.rmtree(bucket_dir(bucket, b))
    code, _, err = verify(f'file://{bucket}', '--trust', str(u / 'agency'))
    assert failed_naming(code, err, f'{b}: missing_incident'), err


def test_bucket_incident_of_another_agencys_device_added(u: Path, bucket: Path,
                                                         tmp_path: Path):
    stranger = make_unit(tmp_path / 'stranger', incidents=1)   # its own agency and key
    (sid,) = os.listdir(stranger / 'ev' / 'spool')
    day = bucket_dir(bucket, ids(u)[0]).parent
    shutil.copytree(stranger / 'ev' / 'spool' / sid, day / sid)
    (day / sid / ev.UPLOAD_MARK).unlink(missing_ok=True)
    code, _, err = verify(f'file://{bucket}', '--trust', str(u / 'agency'))
    assert failed_naming(code, err, f'{sid}: signer: key', 'is not registered',
                         f'{sid}: not_in_ledger'), err
    # Filed under its own device folder, with its own ledger: still not ours.
    shutil.rmtree(day / sid)
    upload(stranger, bucket)
    code, _, err = verify(f'file://{bucket}', '--trust', str(u / 'agency'))
    assert failed_naming(code, err, sid, 'is not registered'), err


def test_bucket_file_flipped(u: Path, bucket: Path):
    c = ids(u)[2]
    target = bucket_dir(bucket, c) / 'sensors.mcap.age'
    flip(target)
    code, out, err = verify(f'file://{bucket}', '--trust', str(u / 'agency'))
    assert failed_naming(code, err, f'{c}', 'sensors.mcap.age: SHA-256 does not match'), err
    assert str(target) in out['bad_files']


def test_s3_bucket_verifies_and_catches_a_flipped_object(u: Path, bucket: Path):
    from s3util import ACCESS_KEY, REGION, SECRET_KEY, S3Server
    server = S3Server()
    try:
        client = server.client()
        # moto keeps one in-memory store per process: a bucket name of this test's own.
        name = f'evidence-{uuid.uuid4().hex[:12]}'
        client.create_bucket(Bucket=name)
        for p in sorted(bucket.rglob('*')):
            if p.is_file():
                client.put_object(Bucket=name, Key='agency/' +
                                  p.relative_to(bucket).as_posix(), Body=p.read_bytes())
        env = {'AWS_ACCESS_KEY_ID': ACCESS_KEY, 'AWS_SECRET_ACCESS_KEY': SECRET_KEY,
               'AWS_DEFAULT_REGION': REGION}
        args = ('--trust', str(u / 'agency'), '--endpoint-url', server.url)
        code, _, err = verify(f's3://{name}/agency', *args, env=env)
        assert code == 2 and 'allow_insecure_http' in err     # plain http is refused
        args += ('--allow-insecure-http',)
        code, out, err = verify(f's3://{name}/agency', *args, env=env)
        assert code == 0, err
        assert out['incidents'] == 3
        c = ids(u)[2]
        key = 'agency/' + bucket_dir(bucket, c).relative_to(bucket).as_posix() + \
            '/video.mp4.age'
        data = bytearray(client.get_object(Bucket=name, Key=key)['Body'].read())
        data[500] ^= 0x01
        client.put_object(Bucket=name, Key=key, Body=bytes(data))
        code, _, err = verify(f's3://{name}/agency', *args, env=env)
        assert failed_naming(code, err, c, 'video.mp4.age: SHA-256 does not match'), err
    finally:
        server.close()


def test_unreadable_trust_store_is_exit_2(u: Path):
    code, _, err = verify(u / 'ev', '--trust', str(u / 'nope'))
    assert code == 2 and '--trust' in err
    manifest_key = base64.b64decode(
        json.loads(next((u / 'ev' / 'spool').glob('*/manifest.json')).read_text())
        ['device_public_key'])
    assert trust.TrustStore.load(u / 'agency').by_public_key(manifest_key) is not None
