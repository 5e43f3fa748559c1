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
                                          auditor; password >= 10 characters) -> 201
POST /api/users/{name}/password {"password"}                   (admin)
GET  /api/status                       -> schema_version, database, bucket, incidents, indexer
GET  /api/devices                      -> {"items": [{device_id, witness {seq, sha256},
                                          max_sequence, ledger_ok, problems}]}
GET  /api/incidents?unit=&officer=&date_from=&date_to=&reason=&verified=true|false&page=
                    &per_page=         -> {"items", "total", "page", "per_page"}, newest first;
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

Pages (the files in ``portal/web/``): ``/login`` -> login.html (no session needed),
``/`` -> index.html, ``/incident`` -> incident.html, ``/audit`` -> audit.html, ``/users`` ->
users.html, ``/<name>.html`` -> <name>.html (a session needed; without one a 401 page that
sends the browser to /login); ``/static/<file>`` serves any file of web/ without a session
(code and style only, never data).
"""
