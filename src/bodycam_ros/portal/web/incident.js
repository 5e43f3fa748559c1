// One incident: player, timeline, sensor plots, GPS track, verification in words, chain of
// custody. Served by the portal (data from /api/incidents/{id}), and inlined by
// `bodycam report` into one offline HTML file (data in window.BODYCAM_REPORT).
'use strict';

const $ = (id) => document.getElementById(id);
const REPORT = window.BODYCAM_REPORT || null;
const CHECKS = [
  ['signature', 'Signature'], ['registered_device', 'Registered device'],
  ['chain_position', 'Chain position'], ['ledger', 'Ledger'], ['files', 'Files'],
  ['manifest', 'Manifest'], ['present', 'Stored'],
];
const REASONS = {
  manual: 'manual start', holster: 'weapon drawn', dispatch_proximity: 'dispatch proximity',
  fight: 'fight', foot_pursuit: 'foot pursuit', officer_down: 'officer down',
  peer_alert: 'peer alert',
};

const view = {
  detail: null, sensors: null, events: [], span: [0, 1], cursors: [], trackDot: null,
  pendingSeek: null,
};

// ------------------------------------------------------------------ the time axis

function videoDuration() {
  const v = $('video');
  if (v && isFinite(v.duration) && v.duration > 0) return v.duration;
  const d = view.detail;
  const video = (d.manifest && d.manifest.video) || {};
  if (typeof video.duration_s === 'number') return video.duration_s;
  if (typeof video.first_stamp === 'number' && typeof video.last_stamp === 'number') {
    return video.last_stamp - video.first_stamp;
  }
  return d.duration_s || 1;
}

// Every view shares one axis: seconds from the video's first frame.
function computeSpan() {
  let lo = 0;
  let hi = videoDuration();
  for (const e of view.events) { lo = Math.min(lo, e.t); hi = Math.max(hi, e.t); }
  const s = view.sensors;
  if (s) {
    for (const k of ['speed', 'accel', 'tilt', 'track']) {
      const p = s[k] || [];
      if (p.length) { lo = Math.min(lo, p[0][0]); hi = Math.max(hi, p[p.length - 1][0]); }
    }
  }
  if (hi - lo < 1) hi = lo + 1;
  view.span = [lo, hi];
}

function seek(t) {
  const v = $('video');
  const target = Math.max(0, t);
  if (v.readyState >= 1) {
    v.currentTime = Math.min(target, isFinite(v.duration) ? v.duration : target);
  } else {
    view.pendingSeek = target;
  }
  updateCursors(target);
}

// ------------------------------------------------------------------ events and timeline

function collectEvents(d) {
  const out = [];
  for (const t of d.triggers || []) {
    if (typeof t.offset_s !== 'number') continue;
    out.push({ kind: 'trigger', t: t.offset_s, label: REASONS[t.reason] || t.reason,
      reason: t.reason, time: t.time });
  }
  for (const s of d.stops || []) {
    if (typeof s.offset_s !== 'number') continue;
    out.push({ kind: 'stop', t: s.offset_s, label: 'stop', time: s.time });
  }
  for (const a of d.alerts || []) {
    if (typeof a.t !== 'number') continue;
    out.push({ kind: 'alert', t: a.t, label: a.message || a.name || 'alert', level: a.level });
  }
  out.sort((a, b) => a.t - b.t);
  return out;
}

function drawTimeline() {
  const { el, clock } = Portal;
  const svg = $('timeline');
  const W = 1000; const L = 10; const R = 990;
  const [lo, hi] = view.span;
  const x = (t) => L + (R - L) * (t - lo) / (hi - lo);
  const kids = [];
  kids.push(el('rect', { x: L, y: 34, width: R - L, height: 14, fill: '#eef1f5', rx: 3,
    class: 'axis', onclick: (ev) => {
      const r = svg.getBoundingClientRect();
      seek(lo + (hi - lo) * ((ev.clientX - r.left) * W / r.width - L) / (R - L));
    } }));
  kids.push(el('rect', { x: x(0), y: 34, width: Math.max(2, x(videoDuration()) - x(0)),
    height: 14, fill: '#c9d8f2', rx: 3, 'pointer-events': 'none' }));
  const step = niceStep((hi - lo) / 8);
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9; t += step) {
    kids.push(el('line', { x1: x(t), x2: x(t), y1: 48, y2: 54, stroke: '#98a2b3' }));
    kids.push(el('text', { x: x(t), y: 68, 'text-anchor': 'middle' }, clock(t)));
  }
  const colors = { trigger: '#c2410c', stop: '#475467', alert: '#b42318' };
  view.events.forEach((e, i) => {
    const cx = x(e.t);
    const top = e.kind === 'alert' ? 2 : (e.kind === 'stop' ? 20 : 8);
    kids.push(el('g', { class: `event ${e.kind}`, 'data-offset': e.t, style: 'cursor:pointer',
      onclick: () => seek(e.t) },
    el('title', {}, `${e.label} at ${clock(e.t)}`),
    el('line', { x1: cx, x2: cx, y1: top + 10, y2: 52, stroke: colors[e.kind],
      'stroke-width': 2 }),
    e.kind === 'stop'
      ? el('rect', { x: cx - 5, y: top, width: 10, height: 10, fill: colors[e.kind] })
      : el('polygon', { points: `${cx - 6},${top} ${cx + 6},${top} ${cx},${top + 10}`,
        fill: colors[e.kind] }),
    el('text', { x: cx + 8, y: top + 9, fill: colors[e.kind], style: `fill:${colors[e.kind]}`,
      'text-anchor': cx > 850 ? 'end' : 'start', dx: cx > 850 ? -16 : 0 },
    i < 12 ? e.label : '')));
  });
  const cursor = el('line', { x1: x(0), x2: x(0), y1: 28, y2: 54, stroke: '#1f5fbf',
    'stroke-width': 2, class: 'cursor', 'pointer-events': 'none' });
  kids.push(cursor);
  view.cursors.push({ node: cursor, x });
  svg.replaceChildren(...kids);

  const list = $('events');
  list.replaceChildren(...view.events.map((e) => el('button', {
    type: 'button', class: e.kind, 'data-offset': e.t, onclick: () => seek(e.t),
    title: e.time ? Portal.utc(e.time) : '',
  }, `${clock(e.t)} · ${e.kind === 'trigger' ? '▶ ' : ''}${e.label}`)));
  if (!view.events.length) list.replaceChildren(el('span', { class: 'muted' }, 'no events'));
}

function niceStep(raw) {
  const p = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1e-9))));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

// ------------------------------------------------------------------ plots

// minSpan: the smallest y range drawn, so sensor noise on a still officer does not fill the
// plot like violent motion; zero: start the axis at 0 for a non-negative quantity.
function plot(svgId, points, color, minSpan, zero) {
  const { el } = Portal;
  const svg = $(svgId);
  const W = 300; const L = 30; const R = 294; const T = 8; const B = 128;
  const [lo, hi] = view.span;
  const x = (t) => L + (R - L) * (t - lo) / (hi - lo);
  const kids = [el('rect', { x: L, y: T, width: R - L, height: B - T, fill: '#fafbfc',
    stroke: '#e4e7ec', onclick: (ev) => {
      const r = svg.getBoundingClientRect();
      seek(lo + (hi - lo) * ((ev.clientX - r.left) * W / r.width - L) / (R - L));
    } })];
  if (!points || !points.length) {
    kids.push(el('text', { x: (L + R) / 2, y: (T + B) / 2, 'text-anchor': 'middle' },
      'no data in sensors.mcap'));
    svg.replaceChildren(...kids);
    return;
  }
  let vmin = Infinity; let vmax = -Infinity;
  for (const [, v] of points) { vmin = Math.min(vmin, v); vmax = Math.max(vmax, v); }
  if (zero && vmin >= 0) vmin = 0;
  if (vmax - vmin < minSpan) {
    const mid = (vmax + vmin) / 2;
    vmin = zero && vmin >= 0 ? Math.max(0, mid - minSpan / 2) : mid - minSpan / 2;
    vmax = vmin + minSpan;
  }
  const y = (v) => B - (B - T) * (v - vmin) / (vmax - vmin);
  const ystep = niceStep((vmax - vmin) / 4);
  for (let v = Math.ceil(vmin / ystep) * ystep; v <= vmax + 1e-9; v += ystep) {
    kids.push(el('line', { x1: L, x2: R, y1: y(v), y2: y(v), stroke: '#eaecf0',
      'pointer-events': 'none' }));
    kids.push(el('text', { x: L - 4, y: y(v) + 4, 'text-anchor': 'end' },
      Math.abs(v) >= 100 ? v.toFixed(0) : String(+v.toFixed(2))));
  }
  const xstep = niceStep((hi - lo) / 5);
  for (let t = Math.ceil(lo / xstep) * xstep; t <= hi + 1e-9; t += xstep) {
    kids.push(el('text', { x: x(t), y: B + 15, 'text-anchor': 'middle' }, String(+t.toFixed(1))));
  }
  for (const e of view.events) {
    if (e.kind === 'alert') continue;
    kids.push(el('line', { x1: x(e.t), x2: x(e.t), y1: T, y2: B, 'pointer-events': 'none',
      stroke: e.kind === 'trigger' ? '#f59e0b' : '#98a2b3', 'stroke-dasharray': '3,3' }));
  }
  kids.push(el('polyline', { class: 'series', fill: 'none', stroke: color, 'stroke-width': 1.4,
    'pointer-events': 'none', 'data-points': points.length,
    points: points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' ') }));
  const cursor = el('line', { x1: x(0), x2: x(0), y1: T, y2: B, stroke: '#1f5fbf',
    'stroke-width': 1.5, class: 'cursor', 'pointer-events': 'none' });
  kids.push(cursor);
  view.cursors.push({ node: cursor, x });
  svg.replaceChildren(...kids);
}

// ------------------------------------------------------------------ GPS track

const EARTH_R = 6371008.8;

function drawTrack(track) {
  const { el } = Portal;
  const svg = $('track');
  const W = 480; const H = 300; const M = 24;
  if (!track || !track.length) {
    svg.replaceChildren(el('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' },
      'no GPS fix in sensors.mcap'));
    $('track-info').textContent = '';
    return;
  }
  // Local tangent plane around the first fix: metres east and north (fine for a few km).
  const lat0 = track[0][1]; const lon0 = track[0][2];
  const k = Math.PI / 180 * EARTH_R;
  const pts = track.map(([t, lat, lon]) => [t, (lon - lon0) * k * Math.cos(lat0 * Math.PI / 180),
    (lat - lat0) * k]);
  let x0 = Infinity; let x1 = -Infinity; let y0 = Infinity; let y1 = -Infinity;
  for (const [, e, n] of pts) {
    x0 = Math.min(x0, e); x1 = Math.max(x1, e); y0 = Math.min(y0, n); y1 = Math.max(y1, n);
  }
  const span = Math.max(x1 - x0, y1 - y0, 20);
  const scale = Math.min((W - 2 * M) / Math.max(x1 - x0, span * 0.05, 1e-9),
    (H - 2 * M - 20) / Math.max(y1 - y0, span * 0.05, 1e-9), (W - 2 * M) / 20);
  const cx = (x0 + x1) / 2; const cy = (y0 + y1) / 2;
  const X = (e) => W / 2 + (e - cx) * scale;
  const Y = (n) => (H - 20) / 2 - (n - cy) * scale;
  const kids = [el('rect', { x: 0, y: 0, width: W, height: H, fill: '#f3f6f1', rx: 4 })];
  kids.push(el('polyline', { class: 'gps-track', fill: 'none', stroke: '#1f5fbf',
    'stroke-width': 2.5, 'stroke-linejoin': 'round', 'data-points': pts.length,
    points: pts.map(([, e, n]) => `${X(e).toFixed(1)},${Y(n).toFixed(1)}`).join(' ') }));
  const first = pts[0]; const last = pts[pts.length - 1];
  kids.push(el('circle', { cx: X(first[1]), cy: Y(first[2]), r: 5, fill: '#17703a' },
    el('title', {}, 'first fix')));
  kids.push(el('rect', { x: X(last[1]) - 4, y: Y(last[2]) - 4, width: 8, height: 8,
    fill: '#b42318' }, el('title', {}, 'last fix')));
  const at = (t) => {
    let best = pts[0];
    for (const p of pts) if (Math.abs(p[0] - t) < Math.abs(best[0] - t)) best = p;
    return best;
  };
  for (const e of view.events) {
    if (e.kind !== 'trigger') continue;
    const p = at(e.t);
    kids.push(el('circle', { cx: X(p[1]), cy: Y(p[2]), r: 6, fill: 'none',
      stroke: '#c2410c', 'stroke-width': 2, style: 'cursor:pointer', onclick: () => seek(e.t) },
    el('title', {}, `${e.label} here`)));
  }
  // Scale bar: a round length near a quarter of the width.
  const want = (W / 4) / scale;
  const p10 = Math.pow(10, Math.floor(Math.log10(want)));
  const len = [1, 2, 5, 10].map((m) => m * p10).filter((v) => v <= want).pop() || p10;
  const bx = M; const by = H - 12; const bw = len * scale;
  kids.push(el('g', { class: 'scale-bar' },
    el('line', { x1: bx, x2: bx + bw, y1: by, y2: by, stroke: '#101828', 'stroke-width': 2 }),
    el('line', { x1: bx, x2: bx, y1: by - 5, y2: by + 1, stroke: '#101828', 'stroke-width': 2 }),
    el('line', { x1: bx + bw, x2: bx + bw, y1: by - 5, y2: by + 1, stroke: '#101828',
      'stroke-width': 2 }),
    el('text', { x: bx + bw + 6, y: by + 4, style: 'fill:#101828' },
      len >= 1000 ? `${len / 1000} km` : `${len} m`)));
  kids.push(el('text', { x: W - 16, y: 20, 'text-anchor': 'middle', style: 'fill:#101828;font-weight:700' },
    'N'), el('polygon', { points: `${W - 16},24 ${W - 21},36 ${W - 11},36`, fill: '#101828' }));
  const dot = el('circle', { cx: X(first[1]), cy: Y(first[2]), r: 5, fill: '#1f5fbf',
    stroke: '#fff', 'stroke-width': 2, class: 'position', 'pointer-events': 'none' });
  kids.push(dot);
  view.trackDot = { node: dot, at, X, Y };
  svg.replaceChildren(...kids);
  let dist = 0;
  for (let i = 1; i < pts.length; i++) {
    dist += Math.hypot(pts[i][1] - pts[i - 1][1], pts[i][2] - pts[i - 1][2]);
  }
  $('track-info').textContent = `${track.length} fixes · ${dist.toFixed(0)} m travelled · ` +
    `from ${lat0.toFixed(5)}, ${lon0.toFixed(5)} · drawn on a local plane, no map tiles`;
}

function updateCursors(t) {
  for (const c of view.cursors) {
    const px = c.x(Math.min(Math.max(t, view.span[0]), view.span[1]));
    c.node.setAttribute('x1', px);
    c.node.setAttribute('x2', px);
  }
  if (view.trackDot) {
    const p = view.trackDot.at(t);
    view.trackDot.node.setAttribute('cx', view.trackDot.X(p[1]));
    view.trackDot.node.setAttribute('cy', view.trackDot.Y(p[2]));
  }
}

// ------------------------------------------------------------------ words and tables

function drawVerification(d) {
  const { el } = Portal;
  const v = d.verification || {};
  const verdict = $('verdict');
  verdict.className = 'verdict ' + (d.verified ? 'ok' : 'bad');
  verdict.replaceChildren(d.verified
    ? '✓ Verified: signed by a registered device, in its chain, recorded in its ledger'
    : '✗ Not verified');
  if (!d.verified && (d.verify_problems || []).length) {
    verdict.append(el('ul', { class: 'reasons', style: 'margin:.4em 0 0;font-weight:500' },
      d.verify_problems.map((p) => el('li', {}, p))));
  }
  $('verdict-badge').replaceChildren(el('span', { class: 'badge ' + (d.verified ? 'ok' : 'bad'),
    id: 'verified-badge' }, d.verified ? '✓ verified' : '✗ not verified'));
  $('checks').replaceChildren(...CHECKS.filter(([k]) => v[k]).map(([k, label]) => el('li', {
    class: v[k].ok ? 'ok' : 'bad', 'data-check': k,
  }, el('b', {}, `${label}: ${v[k].ok ? 'holds' : 'FAILS'}`), el('span', {}, v[k].text))));
}

function drawMeta(d) {
  const { el, utc, duration } = Portal;
  $('title').textContent = `Incident ${d.incident_id}`;
  document.title = `Incident ${d.incident_id} · bodycam`;
  const reasons = [...new Set((d.triggers || []).map((t) => REASONS[t.reason] || t.reason))];
  $('meta').replaceChildren(
    el('span', {}, 'Unit ', el('b', { class: 'mono' }, d.device_id)),
    el('span', {}, 'Officer ', el('b', { class: 'mono' }, d.officer_id || '—')),
    el('span', {}, 'Sequence ', el('b', {}, d.sequence ?? '—')),
    el('span', {}, utc(d.start_time), ' → ', utc(d.end_time)),
    el('span', {}, duration(d.duration_s)),
    el('span', {}, 'Why: ', reasons.length ? reasons.map((r) => el('span', { class: 'chip' }, r))
      : '—'));
}

function drawCustody(d) {
  const { el, utc } = Portal;
  const rows = (d.custody || []).map((c) => el('tr', { 'data-action': c.action },
    el('td', {}, utc(c.time)), el('td', {}, c.source), el('td', {}, el('b', {}, c.action)),
    el('td', { class: 'mono' }, c.user || '—'), el('td', { class: 'mono' }, c.client || ''),
    el('td', { class: 'muted' }, c.entry ?? '')));
  $('custody').querySelector('tbody').replaceChildren(...rows);
}

function drawFiles(d) {
  const { el } = Portal;
  const short = (h) => (h ? el('span', { class: 'mono', title: h }, h.slice(0, 16) + '…') : '—');
  const size = (n) => (typeof n === 'number' ? `${(n / 1024).toFixed(1)} KiB` : '—');
  $('files').querySelector('tbody').replaceChildren(...(d.files || []).map((f) => el('tr', {},
    el('td', { class: 'mono' }, f.name), el('td', {}, size(f.size)), el('td', {}, short(f.sha256)),
    el('td', { class: 'mono' }, f.plaintext_name || (f.encrypted ? 'unknown (crash-left)' : '—')),
    el('td', {}, short(f.plaintext_sha256)))));
  const m = d.manifest || {};
  $('manifest-info').textContent = `${m.format || ''} · manifest SHA-256 ${d.manifest_sha256 || ''}` +
    (m.encryption ? ` · encrypted (${m.encryption.scheme})` : '') +
    (m.recovered ? ' · recovered after a crash' : '');
}

// ------------------------------------------------------------------ video

function setVideo(src, label) {
  const v = $('video');
  const t = v.currentTime || 0;
  const playing = !v.paused;
  if (v.getAttribute('src')) view.pendingSeek = t;
  v.src = src;
  $('video-source').textContent = label;
  if (playing) v.play().catch(() => null);
}

function wireVideo() {
  const v = $('video');
  v.addEventListener('loadedmetadata', () => {
    if (view.pendingSeek !== null) { v.currentTime = view.pendingSeek; view.pendingSeek = null; }
    computeSpan();
    redraw();
  });
  v.addEventListener('timeupdate', () => updateCursors(v.currentTime));
  v.addEventListener('seeked', () => updateCursors(v.currentTime));
}

async function portalVideo(d, me) {
  const v = $('video');
  if (!me.permissions.includes('media')) {
    v.classList.add('hidden');
    $('video-source').textContent = `the role ${me.role} may not play evidence video`;
    return;
  }
  const full = d.links.video;
  const fullLabel = 'full clip, decrypted by the portal and checked against the signed hashes';
  v.addEventListener('error', async () => {
    const src = v.getAttribute('src');
    const r = await fetch(src, { headers: { Range: 'bytes=0-0' } }).catch(() => null);
    const msg = r && !r.ok ? ((await r.json().catch(() => ({}))).error || `HTTP ${r.status}`)
      : 'the browser could not play it';
    $('video-source').textContent = `video refused: ${msg}`;
    $('video-source').classList.add('error');
    v.classList.add('hidden');
  });
  if (d.links.proxy) {
    setVideo(d.links.proxy, '360p proxy (the full clip is being decrypted…)');
    // A HEAD makes the portal decrypt the full clip; switch to it once it is ready.
    const r = await fetch(full, { method: 'HEAD', credentials: 'same-origin' }).catch(() => null);
    if (r && r.ok) setVideo(full, fullLabel);
    else $('video-source').textContent = '360p proxy (the full clip cannot be served)';
  } else {
    setVideo(full, fullLabel);
  }
}

// ------------------------------------------------------------------ assembly

function redraw() {
  view.cursors = [];
  drawTimeline();
  const s = view.sensors || {};
  plot('plot-speed', s.speed, '#1f5fbf', 2, true);
  plot('plot-accel', s.accel, '#7a2e8e', 4, false);   // around 1 g at rest
  plot('plot-tilt', s.tilt, '#0e7c66', 30, true);
  drawTrack(s.track);
  updateCursors($('video').currentTime || 0);
}

function render(d) {
  view.detail = d;
  view.events = collectEvents(d);
  drawMeta(d);
  drawVerification(d);
  drawCustody(d);
  drawFiles(d);
  computeSpan();
  redraw();
  $('incident').classList.remove('hidden');
}

function setSensors(s, note) {
  view.sensors = s;
  if (s && s.alerts && !(view.detail.alerts || []).length) {
    view.detail.alerts = s.alerts;
    view.events = collectEvents(view.detail);
  }
  $('sensors-info').textContent = note;
  computeSpan();
  redraw();
}

async function fromPortal(me) {
  const id = new URLSearchParams(location.search).get('id');
  if (!id) throw new Error('no incident id in the address (?id=...)');
  const d = await Portal.json('/api/incidents/' + encodeURIComponent(id));
  render(d);
  if (me.permissions.includes('export') && d.links.export) {
    $('export').href = d.links.export;
    $('export').classList.remove('hidden');
  }
  wireVideo();
  const media = me.permissions.includes('media');
  const sensors = media
    ? Portal.json(d.links.sensors).then(
      (s) => setSensors(s, `from sensors.mcap, decrypted and checked; speed from ${s.speed_source}`),
      (e) => setSensors(null, `sensors unavailable: ${e.message}`))
    : Promise.resolve(setSensors(null, `the role ${me.role} may not read sensor data`));
  await Promise.all([portalVideo(d, me), sensors]);
  document.body.dataset.ready = '1';
}

function fromReport(r) {
  render(r.detail);
  wireVideo();
  setSensors(r.sensors, r.sensors_note || '');
  const v = r.video || {};
  if (v.base64) {
    const bin = atob(v.base64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    setVideo(URL.createObjectURL(new Blob([bytes], { type: 'video/mp4' })), v.label);
  } else if (v.href) {
    setVideo(v.href, v.label);
  } else {
    $('video').classList.add('hidden');
    $('video-source').textContent = v.label || 'no video';
  }
  document.body.dataset.ready = '1';
}

if (REPORT) {
  document.addEventListener('DOMContentLoaded', () => fromReport(REPORT));
} else {
  Portal.start('incident', fromPortal);
}
