"""The agency portal (issue 12): find, play, verify, export and audit every incident.

``bodycam portal --bucket URL --agency DIR [--database URL]`` serves this API (JSON unless
said otherwise; times are UNIX seconds; every endpoint but ``POST /api/login``, ``/login`` and
``/static/*`` answers 401 without a session; state-changing requests need the header
``X-CSRF-Token`` with the token from login or ``/api/me``, else 403):

POST /api/login {"user", "password"}   -> {"user", "role", "csrf"} + HttpOnly SameSite=Strict
                                          cookie; 401 wrong, 429 after 5 failures/min per
                                          user+address, 415 unless application/json
POST /api/logout                       -> {"ok": true}
GET  /api/me                           -> {"user", "role", "csrf", "permissions", "expires_at"}
POST /api/password {"old_password", "new_password"}
GET  /api/users, POST /api/users {"user","password","role"}   (admin; role admin|supervisor|
                                          auditor|dispatcher; password >= 10 characters) -> 201
POST /api/users/{name}/password {"password"}                   (admin)
GET  /api/status                       -> schema_version, database, bucket, incidents, indexer
GET  /api/devices                      -> {"items": [{device_id, witness {seq, sha256},
                                          max_sequence, ledger_ok, problems}]}
GET  /api/incidents?unit=&officer=&date_from=&date_to=&reason=&verified=true|false
                    &after=|before=|page=&per_page=
                                       -> {"items", "total", "total_is_estimate", "page",
     "per_page", "next", "prev"}, newest first. ``next``/``prev``: opaque cursors for
     ``after=`` (older) / ``before=`` (newer), null at the end; a cursor page costs the same
     at any depth (``page`` is null there). ``page=`` skips at most 10,000 rows (400 beyond).
     ``total``: exact from the indexer's counts (no filter, or one of unit/officer/reason/
     verified) or counted up to 10,000 matches; above that an estimate, and
     ``total_is_estimate`` is true.
     dates: YYYY-MM-DD (date_to inclusive), ISO date-time or UNIX s. Item: incident_id,
     device_id, officer_id, sequence, start_time, end_time, start_iso, end_iso,
     triggers [{reason, time}], verified, verify_problems ["code: message"], has_proxy,
     present (false: gone from the bucket after it was indexed), sort_time
GET  /api/incidents/{id}               -> the item plus duration_s, manifest (summary),
     triggers/stops [{..., offset_s: seconds into the video}], alerts [{t, level, name,
     message, values}], verification {signature, registered_device, manifest, files,
     chain_position, ledger, present: {ok, text}}, custody [{source: portal audit | unit
     ledger | unit audit log, time, action, user, client, status, entry}], files [...],
     links {video, proxy, sensors, export}                     (audited: incident_view)
GET  /api/incidents/{id}/video.mp4     decrypted, hashes checked, Range -> 206  (supervisor,
                                       admin; audited once per session per 5 min)
GET  /api/incidents/{id}/proxy.mp4     the uploader's 360p proxy when has_proxy
GET  /api/incidents/{id}/sensors.json  {t0, speed [[t, m/s]], accel [[t, |a| m/s^2]],
                                       tilt [[t, deg]], track [[t, lat, lon]], alerts}; t in s
                                       from t0 = the video's first frame stamp; <= 2000 points
GET  /api/incidents/{id}/export.zip    court export (supervisor, admin; audited)
GET  /api/audit?incident=&user=&action=&page=&per_page=  (auditor, admin) -> {"items":
     [{seq, time, user, action, incident_id, client, status, details, prev, hash}], "total",
     "page", "per_page", "chain": {ok, rows, head, problems}}
GET  /api/audit/export                 JSON lines, one row each, then {"chain": {...}};
                                       header X-Audit-Chain: ok|broken

Fleet (issue 13; units dial in over the portal link, :mod:`bodycam_ros.core.portal_link`).
Permissions: ``fleet`` (units, alerts), ``live``, ``ack``, ``dispatch``: admin, supervisor and
dispatcher (a dispatcher has only these); auditors none of them:

WS   /api/link                         the unit's WebSocket (subprotocol
                                       bodycam-portal-link.v1; device-key challenge-response,
                                       no session); refused units: close 4401/4403, audited
                                       unit_refused; unit_connected/unit_disconnected audited
GET  /api/units                        -> [{device_id, officer_id, online, last_seen,
     last_seen_iso, connected_since, registered, recording, recorder_state, incident,
     triggers [source], faults [source], position {latitude, longitude, stamp} | null,
     storage {free_bytes}, streaming, viewers, link {client, bytes_in, video_bytes_in,
     fragments_in, viewer_bytes_out} | null, live: URL | null}], online first; every unit
     the trust store registers or the portal has seen
GET  /api/units/{device_id}/live.mp4   the unit's fMP4 relayed (never re-encoded): chunked,
     the init segment then fragments from the next keyframe; the first viewer makes the unit
     stream, every further one shares that stream. 404 unknown, 409 offline, 429 too many
     viewers; audited live_view (user, unit, incident)
POST /api/units/{device_id}/dispatch {"latitude", "longitude"} (DELETE: clear) -> 200
     {id, device_id, delivered: true, queued: false, acked_at} once the unit published it on
     dispatch/destination; 202 {delivered: false, queued: true, expires_at} when the unit is
     offline (sent when it reconnects within 10 min); 400 bad coordinates, 404 unknown unit;
     audited dispatch
GET  /api/alerts?status=open|acknowledged|all&unit=&limit=  -> [{id, device_id, unit,
     officer_id, kind (officer_down | weapon_drawn | offline_while_recording), unit_state
     (raised | cancelled | cleared), status (open | acknowledged), position {latitude,
     longitude} | null, time, time_iso (raised on the unit), received_at, latency_s,
     incident_id, message, ack_by, ack_at, ack_at_iso}], newest first
POST /api/alerts/{id}/ack              -> the alert, acknowledged by this user (409 if it
     was already; 404 unknown); audited alert_ack. With ``--dispatch-webhook URL`` every new
     alert state also goes to dispatch through the durable outbox, in core.outbox's format
     (kinds officer_down, weapon_drawn, unit_offline; ``source: portal``; officer_down with
     the same event id as the unit's dispatch bridge, so the receiver drops the repeat)

Pages (the files in ``portal/web/``): ``/login`` -> login.html (no session needed),
``/`` -> index.html, ``/incident`` -> incident.html, ``/audit`` -> audit.html, ``/users`` ->
users.html, ``/<name>.html`` -> <name>.html (a session needed; without one a 401 page that
sends the browser to /login); ``/static/<file>`` serves any file of web/ without a session
(code and style only, never data).
"""
