"""uploader: drains sealed incidents from the evidence spool to a bucket.

The spool directory is the durable queue (polled every ``poll_s``); ``recorder/status`` only
nudges it to look sooner. Uploads run on the core's worker thread so the executor stays
responsive. Publishes ``uploader/status`` (DiagnosticStatus, latched, 1 Hz) and /diagnostics.
An incident that cannot be trusted is quarantined (``<evidence_dir>/quarantine/<id>.json``)
and reported as ERROR until someone acts; the rest keeps going. This node is the only one
that deletes evidence: ``keep_local_s`` and ``min_free_bytes``, each deletion only after the
bucket's copy verifies again and its signed ``pruned`` ledger entry is on disk.

Trust (issue 10): the device key from ``key_dir`` signs an ``uploaded`` ledger entry per
verified incident and the audit lines; the ledger and audit log go to the bucket after every
incident. Without a key it uploads but never prunes (one WARN). S3 objects request
server-side encryption (``s3_sse``) and, where the bucket has Object Lock, a retention
(``object_lock_mode``, ``object_lock_days``). ``http://`` endpoints need
``allow_insecure_http``. Credentials come only from the AWS chain or ``credentials_file``
(0600): a secret is never a parameter, since anyone on the DDS domain can read parameters.
"""
from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import rclpy.logging
from diagnostic_msgs.msg import DiagnosticStatus
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node

from bodycam_ros.core.evidence import KEY_NAME
from bodycam_ros.core.upload import (LOCK_CHOICES, S3_MIN_PART, SSE_CHOICES, UploadEvent,
                                     UploadStatus, check_endpoint, create_uploader,
                                     parse_bucket_url, proxy_default)
from bodycam_ros.rosutil import (ERROR, LATCHED_QOS, OK, SENSOR_QOS, WARN, Diagnostics,
                                 ParameterError, declare, run_node, status)

MiB = 1024 * 1024
#: A parameter whose name has one of these and does not end in _file would hold a secret.
SECRET_WORDS = ('secret', 'access_key', 'session_token', 'token', 'password', 'passphrase',
                'credential', 'api_key')


class UploaderNode(Node):
    def __init__(self, **kw) -> None:
        super().__init__('uploader', **kw)
        self._log = self.get_logger()          # swapped for a plain logger on shutdown
        self._last_log: dict[str, float] = {}
        self._refuse_secret_parameters()
        evidence_dir = declare(self, 'evidence_dir', 'var/evidence',
                               'evidence directory; sealed incidents are in <dir>/spool')
        bucket = declare(self, 'bucket', 'file://var/bucket',
                         'upload target: file://DIR or s3://bucket/prefix')
        endpoint_url = declare(self, 'endpoint_url', '',
                               'S3-compatible endpoint (MinIO, Ceph); empty for AWS')
        region = declare(self, 'region', '', 'S3 region; empty for the AWS chain default')
        credentials_file = declare(self, 'credentials_file', '',
                                   'AWS credentials file, mode 0600 ([default] or [profile]: '
                                   "aws_access_key_id, aws_secret_access_key); '' = the "
                                   'standard AWS chain (env, ~/.aws, instance role)')
        profile = declare(self, 'profile', '', 'AWS profile (section of credentials_file '
                          "or ~/.aws); '' = default")
        sse = declare(self, 's3_sse', 'AES256', 'server-side encryption requested on every '
                      'object: AES256 (SSE-S3), aws:kms (with s3_kms_key_id) or none',
                      choices=SSE_CHOICES)
        kms_key_id = declare(self, 's3_kms_key_id', '', "KMS key id/ARN for s3_sse aws:kms "
                             "('' = the bucket's default KMS key)")
        lock_mode = declare(self, 'object_lock_mode', 'governance', 'retention put on every '
                            'object where the bucket has Object Lock: governance, compliance '
                            'or off', choices=LOCK_CHOICES)
        lock_days = declare(self, 'object_lock_days', 365, 'Object Lock retention [days]',
                            min_value=1, max_value=36500)
        allow_http = declare(self, 'allow_insecure_http', False,
                             'accept a plain http:// endpoint_url (tests and loopback only)')
        device_id = declare(self, 'device_id', '', "this unit as registered with the agency "
                            "(the ledger's device); '' = the host name, as the recorder's")
        part_size = declare(self, 'part_size', 8 * MiB,
                            'multipart part size [bytes] (S3 minimum 5 MiB)',
                            min_value=64 * 1024, max_value=5 * 1024 * MiB)
        threshold = declare(self, 'multipart_threshold', 8 * MiB,
                            'files larger than this [bytes] go up in resumable parts',
                            min_value=0, max_value=5 * 1024 * MiB)
        bandwidth = declare(self, 'bandwidth_bps', 0, 'uplink cap [bytes/s]; 0 = unlimited',
                            min_value=0, max_value=10_000_000_000)
        keep_local_s = declare(self, 'keep_local_s', -1.0,
                               'delete the local incident this long [s] after it verified; '
                               '-1 = never', min_value=-1.0, max_value=1e9)
        min_free_bytes = declare(self, 'min_free_bytes', 500_000_000,
                                 'disk pressure: below this many free bytes delete verified '
                                 'incidents oldest first (the bucket copy is checked first); '
                                 '0 = never', min_value=0, max_value=10**15)
        max_evidence_bytes = declare(self, 'max_evidence_bytes', 0,
                                     'space evidence may use at most [bytes], as the '
                                     "recorder's; 0 = the whole disk", min_value=0,
                                     max_value=10**15)
        prune_check_s = declare(self, 'prune_check_s', 10.0,
                                'how often the pruner looks at free space [s]',
                                min_value=0.1, max_value=3600.0)
        max_backoff_s = declare(self, 'max_backoff_s', 60.0,
                                'longest wait between retries [s]', min_value=1.0,
                                max_value=3600.0)
        poll_s = declare(self, 'poll_s', 1.0, 'spool poll period [s]', min_value=0.05,
                         max_value=60.0)
        key_dir = declare(self, 'key_dir', '',
                          "the recorder's key_dir: manifests must be signed by its "
                          "device_ed25519.pub; '' or absent: each manifest's own key")
        self._drain_s = declare(self, 'drain_on_exit_s', 8.0,
                                'on shutdown, keep uploading what the recorder seals for up '
                                'to this long [s]', min_value=0.0, max_value=60.0)
        proxy = self._declare_proxy()
        try:
            parsed = parse_bucket_url(bucket)
        except ValueError as exc:
            raise ParameterError(f'parameter uploader.bucket={bucket!r}: {exc}') from None
        if parsed.scheme == 's3' and part_size < S3_MIN_PART:
            raise ParameterError(f'parameter uploader.part_size={part_size} is invalid for '
                                 f's3://; allowed >= {S3_MIN_PART} (5 MiB)')
        use_proxy = proxy_default(parsed) if proxy == 'auto' else proxy == 'true'
        if parsed.scheme == 's3':
            try:
                check_endpoint(endpoint_url, allow_http)
            except ValueError as exc:
                raise ParameterError(f'parameter uploader.endpoint_url={endpoint_url!r}: '
                                     f'{exc} (uploader.allow_insecure_http)') from None
        try:
            self._uploader = create_uploader(
                bucket, Path(evidence_dir), proxy=use_proxy, on_event=self._on_event,
                s3_options={'endpoint_url': endpoint_url, 'region': region,
                            'credentials_file': credentials_file or None, 'profile': profile,
                            'sse': sse, 'kms_key_id': kms_key_id,
                            'object_lock_mode': lock_mode, 'object_lock_days': lock_days,
                            'allow_insecure_http': allow_http},
                part_size=part_size, multipart_threshold=threshold, bandwidth_bps=bandwidth,
                keep_local_s=keep_local_s, min_free_bytes=min_free_bytes,
                max_evidence_bytes=max_evidence_bytes, prune_check_s=prune_check_s,
                max_backoff_s=max_backoff_s, poll_s=poll_s,
                device_key=Path(key_dir) / f'{KEY_NAME}.pub' if key_dir else None,
                key_dir=Path(key_dir) if key_dir else None,
                device_id=device_id or socket.gethostname(), clock=self._now)
        except ValueError as exc:
            name = 'credentials_file' if 'credentials_file' in str(exc) else 'bucket'
            raise ParameterError(f'parameter uploader.{name}: {exc}') from None
        self._bucket = self._uploader.backend.url
        self._pub = self.create_publisher(DiagnosticStatus, 'uploader/status', LATCHED_QOS)
        self._diag = Diagnostics(self, hardware_id=self._bucket)
        self.create_subscription(DiagnosticStatus, 'recorder/status', self._on_recorder,
                                 SENSOR_QOS)
        self._recorder_key: tuple[str, str] | None = None
        self.create_timer(1.0, self._publish)
        self._uploader.start()
        self.get_logger().info(f'uploading {Path(evidence_dir) / "spool"} to {self._bucket} '
                               f'(proxy {"on" if use_proxy else "off"})')

    def _now(self) -> float:
        """ROS time [s] for ledger and audit entries (sim time under replay)."""
        return self.get_clock().now().nanoseconds / 1e9

    def _refuse_secret_parameters(self) -> None:
        """Exit 2 on a secret given as a parameter value (YAML or ``-p``), declared or not:
        anyone on the DDS domain can read parameters, and YAML files get copied around."""
        for name in self._parameter_overrides:
            low = name.lower()
            if any(w in low for w in SECRET_WORDS) and not low.endswith('_file'):
                raise ParameterError(
                    f'parameter {self.get_name()}.{name}: secrets are never parameters; put '
                    'the keys in a file only its owner can read (chmod 600) and give its '
                    'path in uploader.credentials_file, or use the AWS credential chain '
                    '(environment, ~/.aws, instance role)')

    def _declare_proxy(self) -> str:
        """``proxy``: true, false or 'auto' (on for s3://, off for file://)."""
        desc = ParameterDescriptor(description="upload a 360p proxy first: true, false or "
                                   "'auto' (on for s3://, off for file://)", read_only=True,
                                   dynamic_typing=True)
        value = self.declare_parameter('proxy', 'auto', desc).value
        text = str(value).lower()
        if text not in ('auto', 'true', 'false'):
            raise ParameterError(f'parameter uploader.proxy={value!r} is invalid; allowed one '
                                 'of true, false, auto')
        return text

    # -- callbacks: convert, call core, publish -----------------------------------------------
    def _on_recorder(self, msg: DiagnosticStatus) -> None:
        values = {kv.key: kv.value for kv in msg.values}
        key = (msg.message, values.get('incident_id', ''))
        if key != self._recorder_key:
            self._recorder_key = key
            self._uploader.nudge()

    def _on_event(self, e: UploadEvent) -> None:
        """Called on the worker thread; logging is thread-safe. Repeats are throttled."""
        text = f'{e.incident_id + ": " if e.incident_id else ""}{e.message}'
        if e.kind in ('error', 'warning', 'quarantined'):
            now = time.monotonic()
            if now - self._last_log.get(text, -1e9) < 30.0:
                return
            self._last_log[text] = now
            # One call site per severity: rclpy refuses a site whose severity changes.
            if e.kind == 'quarantined':
                self._log.error(f'quarantined {text}')
            elif e.kind == 'error':
                self._log.error(text)
            else:
                self._log.warning(text)
        elif e.kind in ('verified', 'deleted', 'yield', 'proxy_ready', 'released', 'requeued',
                        'info'):
            self._log.info(f'{e.kind} {text}')

    def _publish(self) -> None:
        st = self._uploader.status()
        level, message = self.level(st)
        values = dict(queue_length=st.queue_length, bytes_pending=st.bytes_pending,
                      current_incident=st.current_incident, rate_bps=round(st.rate_bps),
                      last_error=st.last_error, state=st.state,
                      verified_total=st.verified_total, bucket=self._bucket,
                      quarantined=st.quarantined, quarantine_reason=st.quarantine_reason,
                      pruned_total=st.pruned_total, low_disk=st.low_disk,
                      free_bytes='' if st.free_bytes is None else st.free_bytes)
        self._pub.publish(status('uploader', level, message, self._bucket, **values))
        self._diag.set(level, message, **values)

    @staticmethod
    def level(st: UploadStatus) -> tuple[int, str]:
        """ERROR when someone must act (credentials, bucket, a quarantined incident, a disk
        full of evidence not yet uploaded) or nothing has worked for a while; WARN while
        retrying; OK otherwise."""
        if st.error_kind and (st.config_error or st.consecutive_failures >= 5):
            return ERROR, f'{st.state}: {st.last_error}'
        if st.quarantined:
            return ERROR, (f'{st.quarantined} incident(s) quarantined (kept, not uploaded); '
                           f'last {st.quarantine_reason}')
        if st.low_disk:
            return ERROR, (f'disk low: {st.free_bytes} bytes free and no verified incident '
                           'left to delete')
        if st.error_kind:
            return WARN, f'retrying: {st.last_error}'
        if st.current_incident:
            return OK, f'{st.state} {st.current_incident}'
        return OK, f'{st.state}; {st.queue_length} queued'

    def close(self) -> None:
        """On shutdown: upload what the recorder seals as it stops, then stop the worker."""
        # The context may be shut down already: log without the /rosout publisher.
        log = rclpy.logging.get_logger(f'{self.get_name()}_shutdown')
        self._log = log
        if self._drain_s > 0:
            log.info(f'stopping: uploading what is sealed for up to '
                                   f'{self._drain_s:g} s')
        self._uploader.stop(drain_s=self._drain_s)
        st = self._uploader.status()
        log.info(f'stopped: {st.verified_total} verified this run, '
                               f'{st.queue_length} left in the spool')
        self._uploader.backend.close()


def main(args=None) -> int:
    return run_node(lambda: UploaderNode(), args)


if __name__ == '__main__':
    sys.exit(main())
