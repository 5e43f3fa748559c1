// Fleet page: every unit's link, recorder, triggers, position and storage; its live video
// relayed by the portal (fMP4 into Media Source Extensions, as the unit's own live page
// does); alerts polled every ALERT_POLL_MS, shown at once, sounded and acknowledged; dispatch
// a unit to a point typed in or clicked on the track view. Plain JavaScript, no library, no
// external request (no internet map: a local metric plane with a scale bar).
'use strict';

const ALERT_POLL_MS = 250;     // an alert on screen within this (plus one request) of arrival
const UNIT_POLL_MS = 1000;
const TRAIL_MAX = 400;         // positions kept per unit while the page is open
const MAX_LAG_S = 0.5;         // live, not DVR: behind the newest frame by more, jump
const KEEP_BEHIND_S = 10;      // buffered video kept behind the playhead
const EARTH_R = 6371008.8;
const KIND_TEXT = { officer_down: 'OFFICER DOWN', weapon_drawn: 'WEAPON DRAWN',
  offline_while_recording: 'OFFLINE WHILE RECORDING' };
const $ = (id) => document.getElementById(id);
const stats = window.fleetStats = { mode: 'none', bytes: 0, appends: 0, jumps: 0,
  reconnects: 0, lastError: '', beeps: 0, alertPolls: 0, unitPolls: 0, codec: '' };

const view = {
  units: [], alerts: [], trails: new Map(), dests: new Map(), pick: null,
  shown: new Map(),          // alert id -> when it was first painted (s, this clock)
  live: null,                // {device, abort}
  project: null,             // current track-view projection (for clicks)
};

// ------------------------------------------------------------------ formatting

function ago(t) {
  if (typeof t !== 'number') return 'never';
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return Portal.utc(t);
}

function clockUtc(t) {
  return typeof t === 'number' ? Portal.utc(t).slice(11) : '—';
}

function pos(p) {
  return p && typeof p.latitude === 'number'
    ? `${p.latitude.toFixed(5)}, ${p.longitude.toFixed(5)}` : 'no position';
}

function bytes(n) {
  if (typeof n !== 'number') return '—';
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)} GB free`;
  return `${Math.round(n / 1e6)} MB free`;
}

// ------------------------------------------------------------------ sound (WebAudio)

const sound = { ctx: null, next: 0 };

function audioRunning() { return !!sound.ctx && sound.ctx.state === 'running'; }

function soundButton() {
  const b = $('sound');
  const on = audioRunning();
  b.textContent = on ? 'Alert sound on' : 'Enable alert sound';
  b.className = on ? 'sound-on' : 'sound-off';
  document.body.dataset.audio = on ? 'running' : (sound.ctx ? sound.ctx.state : 'none');
}

async function enableSound() {
  const AC = window.AudioContext || window.webkitAudioContext;
  if (!AC) { $('sound').textContent = 'No audio in this browser'; return; }
  if (!sound.ctx) sound.ctx = new AC();
  try { await sound.ctx.resume(); } catch (e) { stats.lastError = String(e); }
  soundButton();
  sound.ctx.onstatechange = soundButton;
}

// One beep: officer down is a two-tone, louder and every second; others one tone every 2 s.
function beep(kind) {
  const c = sound.ctx;
  const t = c.currentTime;
  const tones = kind === 'officer_down' ? [[960, 0], [720, 0.2]] : [[880, 0]];
  for (const [f, dt] of tones) {
    const osc = c.createOscillator();
    const gain = c.createGain();
    osc.type = 'square';
    osc.frequency.value = f;
    gain.gain.setValueAtTime(0.0001, t + dt);
    gain.gain.exponentialRampToValueAtTime(0.25, t + dt + 0.01);
    gain.gain.exponentialRampToValueAtTime(0.0001, t + dt + 0.18);
    osc.connect(gain).connect(c.destination);
    osc.start(t + dt);
    osc.stop(t + dt + 0.2);
  }
  stats.beeps++;
}

// Sounds while an alert is open and still raised on the unit; stops when acknowledged.
function soundTick() {
  const loud = view.alerts.filter((a) => a.status === 'open' && a.unit_state === 'raised');
  const sounding = loud.length > 0;
  document.body.dataset.sounding = String(sounding && audioRunning());
  document.body.dataset.alerting = String(sounding);
  if (!sounding || !audioRunning()) return;
  const now = performance.now();
  if (now < sound.next) return;
  const down = loud.some((a) => a.kind === 'officer_down');
  beep(down ? 'officer_down' : loud[0].kind);
  sound.next = now + (down ? 1000 : 2000);
}

// ------------------------------------------------------------------ alerts

function alertCard(a) {
  const { el } = Portal;
  const where = a.position ? pos(a.position) : 'position unknown';
  const stateNote = a.unit_state === 'raised' ? null
    : el('span', { class: 'note' }, a.unit_state === 'cleared' ? 'cleared on the unit'
      : 'cancelled on the unit');
  const ack = Portal.may('ack') ? el('button', { type: 'button', class: 'ack',
    'data-ack': a.id, onclick: (ev) => acknowledge(a.id, ev.target) }, 'Acknowledge') : null;
  const watch = Portal.may('live') && unitOnline(a.device_id)
    ? el('button', { type: 'button', class: 'plain', onclick: () => openLive(a.device_id) },
      'Watch live') : null;
  return el('div', { class: `alert-card kind-${a.kind} unit-${a.unit_state}`,
    'data-alert': a.id, 'data-kind': a.kind, 'data-device': a.device_id },
  el('div', { class: 'what' }, KIND_TEXT[a.kind] || a.kind, stateNote),
  el('div', { class: 'who' },
    el('span', {}, 'Unit ', el('b', { class: 'mono' }, a.device_id)),
    el('span', {}, 'Officer ', el('b', { class: 'mono' }, a.officer_id || '—')),
    el('span', {}, 'at ', el('b', { class: 'mono' }, where)),
    el('span', {}, 'raised ', el('b', {}, clockUtc(a.time)),
      el('span', { class: 'since', 'data-t': a.time }, ` (${ago(a.time)})`))),
  el('div', { class: 'actions' }, watch, ack));
}

function renderAlerts() {
  const { el } = Portal;
  const open = view.alerts.filter((a) => a.status === 'open');
  const box = $('alerts');
  const have = new Map([...box.children].map((n) => [n.dataset.alert, n]));
  const fresh = [];
  const cards = open.map((a) => {
    const old = have.get(a.id);
    const sig = `${a.unit_state}|${unitOnline(a.device_id)}|${Portal.may('ack')}`;
    if (old && old.dataset.sig === sig) return old;
    const card = alertCard(a);
    card.dataset.sig = sig;
    if (old && old.dataset.shownAt) card.dataset.shownAt = old.dataset.shownAt;
    else fresh.push(card);
    return card;
  });
  box.replaceChildren(...cards);
  // "Shown" = painted: the next animation frame after the card entered the page.
  if (fresh.length) {
    requestAnimationFrame(() => {
      const t = Date.now() / 1000;
      for (const c of fresh) {
        if (!c.dataset.shownAt) c.dataset.shownAt = String(t);
        if (!view.shown.has(c.dataset.alert)) view.shown.set(c.dataset.alert, t);
      }
    });
  }
  for (const s of box.querySelectorAll('.since')) s.textContent = ` (${ago(Number(s.dataset.t))})`;
  document.title = open.length ? `⚠ ${KIND_TEXT[open[0].kind] || 'ALERT'} · Fleet`
    : 'Fleet · bodycam portal';

  const body = $('alert-log').querySelector('tbody');
  body.replaceChildren(...view.alerts.map((a) => el('tr', { 'data-alert': a.id,
    'data-status': a.status, class: a.status === 'open' ? 'open' : null },
  el('td', {}, clockUtc(a.time),
    el('div', { class: 'muted small' }, Portal.utc(a.time).slice(0, 10))),
  el('td', {}, el('span', { class: `kind kind-${a.kind}` }, KIND_TEXT[a.kind] || a.kind),
    a.unit_state !== 'raised' ? el('div', { class: 'muted small' }, a.unit_state) : null),
  el('td', { class: 'mono' }, a.device_id),
  el('td', { class: 'mono' }, a.officer_id || '—'),
  el('td', { class: 'mono small' }, a.position ? pos(a.position) : '—'),
  el('td', {}, a.ack_by ? [el('span', { class: 'badge ok' }, `✓ ${a.ack_by}`), ' ',
    el('span', { class: 'muted small' }, clockUtc(a.ack_at))]
    : el('span', { class: 'badge bad' }, 'open')))));
  $('no-alerts').classList.toggle('hidden', view.alerts.length > 0);
  soundTick();
}

async function acknowledge(id, button) {
  if (button) button.disabled = true;
  try {
    const r = await Portal.api(`/api/alerts/${encodeURIComponent(id)}/ack`, { method: 'POST' });
    if (!r.ok && r.status !== 409) {
      const d = await r.json().catch(() => ({}));
      throw new Error(d.error || `acknowledge: HTTP ${r.status}`);
    }
  } catch (e) {
    showError(e);
    if (button) button.disabled = false;
  }
  await pollAlerts();
}

async function pollAlerts() {
  const list = await Portal.json('/api/alerts?status=all&limit=50');
  stats.alertPolls++;
  const newOpen = list.some((a) => a.status === 'open' && !view.shown.has(a.id));
  view.alerts = list;
  renderAlerts();
  if (newOpen) pollUnits().catch(showError);   // the unit's row changes too: now
}

// ------------------------------------------------------------------ units

function unitOnline(did) { return view.units.some((u) => u.device_id === did && u.online); }

function unitRow(u) {
  const { el } = Portal;
  const rec = u.recorder_state || 'UNKNOWN';
  const canWatch = Portal.may('live') && u.online;
  const selected = view.live && view.live.device === u.device_id;
  const alerting = view.alerts.some((a) => a.device_id === u.device_id && a.status === 'open');
  return el('tr', { class: `unit${canWatch ? ' row-link' : ''}${selected ? ' selected' : ''}` +
    (alerting ? ' alerting' : ''), 'data-device': u.device_id,
  'data-online': String(u.online), 'data-recording': String(u.recording),
  onclick: canWatch ? () => openLive(u.device_id) : null },
  el('td', {}, el('div', { class: 'mono strong' }, u.device_id),
    el('div', { class: 'muted small mono', title: 'officer' }, u.officer_id || '—'),
    u.registered ? null : el('div', { class: 'error small' }, 'not registered')),
  el('td', {}, el('span', { class: `pill ${u.online ? 'online' : 'offline'}` },
    u.online ? 'online' : 'offline'),
  el('div', { class: 'muted small' }, u.online ? `seen ${ago(u.last_seen)}`
    : `last seen ${ago(u.last_seen)}`)),
  el('td', {}, el('span', { class: `pill rec-${rec}` }, rec.replace('_', ' ')),
    u.incident ? el('div', { class: 'muted small mono', title: `incident ${u.incident}` },
      u.incident.length > 14 ? `${u.incident.slice(0, 13)}…` : u.incident) : null),
  el('td', {}, u.triggers.length || u.faults.length
    ? [...u.triggers.map((t) => el('span', { class: 'chip' }, t.replace('_', ' '))),
      ...u.faults.map((t) => el('span', { class: 'chip fault' }, `${t} fault`))]
    : el('span', { class: 'muted' }, 'none')),
  el('td', { class: 'mono small' }, pos(u.position),
    u.position && u.position.stamp ? el('div', { class: 'muted' }, `fix ${ago(u.position.stamp)}`)
      : null),
  el('td', { class: 'small' }, bytes(u.storage && u.storage.free_bytes)),
  el('td', {}, canWatch ? el('button', { type: 'button', class: 'primary watch',
    onclick: (ev) => { ev.stopPropagation(); openLive(u.device_id); } },
  selected ? 'Watching' : '▶ Live') : null,
  u.viewers ? el('div', { class: 'muted small' }, `${u.viewers} watching`) : null));
}

function renderUnits() {
  const online = view.units.filter((u) => u.online).length;
  const rec = view.units.filter((u) => u.recording && u.online).length;
  $('summary').textContent = `${view.units.length} unit${view.units.length === 1 ? '' : 's'}` +
    ` · ${online} online · ${rec} recording`;
  $('units').querySelector('tbody').replaceChildren(...view.units.map(unitRow));
  $('no-units').classList.toggle('hidden', view.units.length > 0);
  const sel = $('d-unit');
  const keep = sel.value;
  sel.replaceChildren(...view.units.map((u) => Portal.el('option', { value: u.device_id },
    `${u.device_id}${u.online ? '' : ' (offline: queued)'}`)));
  if (keep && view.units.some((u) => u.device_id === keep)) sel.value = keep;
  else if (view.live) sel.value = view.live.device;
  $('updated').textContent = `updated ${clockUtc(Date.now() / 1000)}`;
}

async function pollUnits() {
  const list = await Portal.json('/api/units');
  stats.unitPolls++;
  view.units = list;
  for (const u of list) {
    if (!u.position) continue;
    const trail = view.trails.get(u.device_id) || [];
    const last = trail[trail.length - 1];
    if (!last || last[0] !== u.position.latitude || last[1] !== u.position.longitude) {
      trail.push([u.position.latitude, u.position.longitude]);
      if (trail.length > TRAIL_MAX) trail.shift();
    }
    view.trails.set(u.device_id, trail);
  }
  renderUnits();
  drawMap();
  if (view.live) liveInfo();
  document.body.dataset.loaded = String(Date.now());
}

// ------------------------------------------------------------------ track view

function drawMap() {
  const { el } = Portal;
  const svg = $('map');
  const W = 560; const H = 420; const M = 28;
  const pts = [];
  for (const t of view.trails.values()) pts.push(...t);
  for (const d of view.dests.values()) pts.push([d.latitude, d.longitude]);
  if (view.pick) pts.push([view.pick.latitude, view.pick.longitude]);
  const kids = [el('rect', { x: 0, y: 0, width: W, height: H, fill: '#f3f6f1', rx: 4 })];
  if (!pts.length) {
    kids.push(el('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' },
      'no unit has reported a position yet'));
    svg.replaceChildren(...kids);
    view.project = null;
    $('map-info').replaceChildren();
    return;
  }
  // Local tangent plane (metres east/north) around the middle of everything shown.
  let la0 = Infinity; let la1 = -Infinity; let lo0 = Infinity; let lo1 = -Infinity;
  for (const [la, lo] of pts) {
    la0 = Math.min(la0, la); la1 = Math.max(la1, la); lo0 = Math.min(lo0, lo);
    lo1 = Math.max(lo1, lo);
  }
  const lat0 = (la0 + la1) / 2; const lon0 = (lo0 + lo1) / 2;
  const k = Math.PI / 180 * EARTH_R;
  const kx = k * Math.cos(lat0 * Math.PI / 180);
  const spanE = Math.max((lo1 - lo0) * kx, 400); const spanN = Math.max((la1 - la0) * k, 400);
  const scale = Math.min((W - 2 * M) / spanE, (H - 2 * M - 24) / spanN);
  const X = (lo) => W / 2 + (lo - lon0) * kx * scale;
  const Y = (la) => (H - 24) / 2 - (la - lat0) * k * scale;
  view.project = { inv: (x, y) => ({ longitude: lon0 + (x - W / 2) / (kx * scale),
    latitude: lat0 - (y - (H - 24) / 2) / (k * scale) }) };
  // Scale bar length, and a grid at the same spacing so distances read anywhere.
  const want = (W / 4) / scale;
  const p10 = Math.pow(10, Math.floor(Math.log10(want)));
  const len = [1, 2, 5, 10].map((m) => m * p10).filter((v) => v <= want).pop() || p10;
  const step = len * scale;
  const grid = [];
  for (let x = W / 2 % step; x < W; x += step) grid.push(`M${x.toFixed(1)},0V${H}`);
  for (let y = ((H - 24) / 2) % step; y < H; y += step) grid.push(`M0,${y.toFixed(1)}H${W}`);
  kids.push(el('path', { d: grid.join(''), stroke: '#dfe5da', 'stroke-width': 1, fill: 'none' }));
  for (const [did, trail] of view.trails) {
    if (trail.length < 2) continue;
    kids.push(el('polyline', { class: 'trail', 'data-device': did, fill: 'none',
      stroke: '#8fb4ff', 'stroke-width': 2, 'stroke-linejoin': 'round',
      points: trail.map(([la, lo]) => `${X(lo).toFixed(1)},${Y(la).toFixed(1)}`).join(' ') }));
  }
  for (const [did, d] of view.dests) {
    const x = X(d.longitude); const y = Y(d.latitude);
    kids.push(el('g', { class: 'dest', 'data-device': did },
      el('path', { d: `M${x - 6},${y - 6}L${x + 6},${y + 6}M${x - 6},${y + 6}L${x + 6},${y - 6}`,
        stroke: '#7a2e0e', 'stroke-width': 2.5 }),
      el('text', { x: x - 6, y: y + 20, style: 'fill:#7a2e0e' }, `→ ${did}`),
      el('title', {}, `dispatch destination of ${did}: ${pos(d)}`)));
  }
  if (view.pick) {
    const x = X(view.pick.longitude); const y = Y(view.pick.latitude);
    kids.push(el('circle', { class: 'pick', cx: x, cy: y, r: 7, fill: 'none', stroke: '#c2410c',
      'stroke-width': 2, 'stroke-dasharray': '3 2' }));
  }
  for (const u of view.units) {
    if (!u.position) continue;
    const x = X(u.position.longitude); const y = Y(u.position.latitude);
    const alerting = view.alerts.some((a) => a.device_id === u.device_id && a.status === 'open');
    const fill = !u.online ? '#98a2b3' : u.recording ? '#b42318' : '#17703a';
    kids.push(el('g', { class: `marker${alerting ? ' alerting' : ''}`, 'data-device': u.device_id,
      style: u.online && Portal.may('live') ? 'cursor:pointer' : null,
      onclick: u.online && Portal.may('live')
        ? (ev) => { ev.stopPropagation(); openLive(u.device_id); } : null },
    alerting ? el('circle', { class: 'ring', cx: x, cy: y, r: 14, fill: 'none',
      stroke: '#b42318', 'stroke-width': 3 }) : null,
    el('circle', { cx: x, cy: y, r: 7, fill, stroke: '#fff', 'stroke-width': 2 }),
    el('text', { x: x + 10, y: y - 8, class: 'label' }, u.device_id),
    el('title', {}, `${u.device_id} (${u.online ? 'online' : 'offline'}, ` +
      `${u.recorder_state}) at ${pos(u.position)}`)));
  }
  const bx = M; const by = H - 12; const bw = len * scale;
  kids.push(el('g', { class: 'scale-bar' },
    el('rect', { x: bx - 6, y: by - 14, width: bw + 70, height: 22, fill: '#f3f6f1',
      opacity: 0.85 }),
    el('line', { x1: bx, x2: bx + bw, y1: by, y2: by, stroke: '#101828', 'stroke-width': 2 }),
    el('line', { x1: bx, x2: bx, y1: by - 5, y2: by + 1, stroke: '#101828', 'stroke-width': 2 }),
    el('line', { x1: bx + bw, x2: bx + bw, y1: by - 5, y2: by + 1, stroke: '#101828',
      'stroke-width': 2 }),
    el('text', { x: bx + bw + 6, y: by + 4, style: 'fill:#101828' },
      len >= 1000 ? `${len / 1000} km` : `${len} m`)));
  kids.push(el('text', { x: W - 16, y: 20, 'text-anchor': 'middle',
    style: 'fill:#101828;font-weight:700' }, 'N'),
  el('polygon', { points: `${W - 16},24 ${W - 21},36 ${W - 11},36`, fill: '#101828' }));
  svg.replaceChildren(...kids);
  const key = (color, text) => el('span', { class: 'key' },
    el('span', { class: 'dot', style: `background:${color}` }), text);
  $('map-info').replaceChildren(`grid ${len >= 1000 ? `${len / 1000} km` : `${len} m`}`,
    key('#17703a', 'online'), key('#b42318', 'recording'), key('#98a2b3', 'offline'),
    el('span', { class: 'key', style: 'color:#7a2e0e' }, '× dispatch destination'));
}

function mapClick(ev) {
  if (!view.project || !Portal.may('dispatch')) return;
  const svg = $('map');
  const p = svg.createSVGPoint();
  p.x = ev.clientX; p.y = ev.clientY;
  const q = p.matrixTransform(svg.getScreenCTM().inverse());
  const ll = view.project.inv(q.x, q.y);
  view.pick = ll;
  $('d-lat').value = ll.latitude.toFixed(6);
  $('d-lon').value = ll.longitude.toFixed(6);
  drawMap();
}

// ------------------------------------------------------------------ dispatch

async function sendDispatch(clear) {
  const did = $('d-unit').value;
  const out = $('d-result');
  out.className = 'source';
  if (!did) { out.textContent = 'pick a unit'; return; }
  const body = clear ? null : { latitude: Number($('d-lat').value),
    longitude: Number($('d-lon').value) };
  out.textContent = clear ? `clearing ${did}'s destination…` : `sending to ${did}…`;
  try {
    const r = await Portal.api(`/api/units/${encodeURIComponent(did)}/dispatch`, {
      method: clear ? 'DELETE' : 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: clear ? null : JSON.stringify(body),
    });
    const d = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(d.error || `dispatch: HTTP ${r.status}`);
    if (clear) view.dests.delete(did);
    else view.dests.set(did, body);
    view.pick = null;
    out.dataset.result = d.delivered ? 'delivered' : 'queued';
    out.dataset.dispatch = d.id;
    out.textContent = d.delivered
      ? `${clear ? 'Cleared' : 'Delivered'}: ${did} acknowledged at ${clockUtc(d.acked_at)}` +
        (clear ? '' : ` (${pos(body)})`)
      : `Queued: ${did} is offline; it gets this when it reconnects before ` +
        `${clockUtc(d.expires_at)}`;
    drawMap();
  } catch (e) {
    out.className = 'source error';
    out.dataset.result = 'error';
    out.textContent = String(e.message || e);
  }
}

// ------------------------------------------------------------------ live video

// avc1.PPCCLL from the init segment's avcC box (profile, compatibility, level).
function codecOf(init) {
  for (let i = 4; i + 8 < init.length; i++) {
    if (init[i] === 0x61 && init[i + 1] === 0x76 && init[i + 2] === 0x63 && init[i + 3] === 0x43) {
      const h = (b) => b.toString(16).padStart(2, '0');
      return `avc1.${h(init[i + 5])}${h(init[i + 6])}${h(init[i + 7])}`;
    }
  }
  return 'avc1.42c01f';
}

// Length of the leading ftyp+moov (the init segment) once all of it is in ``buf``, else 0.
function initLength(buf) {
  let off = 0;
  while (off + 8 <= buf.length) {
    const size = ((buf[off] << 24) >>> 0) + (buf[off + 1] << 16) + (buf[off + 2] << 8) +
      buf[off + 3];
    const type = String.fromCharCode(buf[off + 4], buf[off + 5], buf[off + 6], buf[off + 7]);
    if (size < 8 || off + size > buf.length) return 0;
    off += size;
    if (type === 'moov') return off;
  }
  return 0;
}

function concat(chunks) {
  const n = chunks.reduce((s, c) => s + c.length, 0);
  const out = new Uint8Array(n);
  let o = 0;
  for (const c of chunks) { out.set(c, o); o += c.length; }
  return out;
}

function setLive(text, cls) {
  const s = $('live-state');
  s.textContent = text;
  s.className = 'pill ' + cls;
}

function liveInfo() {
  const u = view.units.find((x) => x.device_id === view.live.device);
  const parts = [`${stats.mode === 'mse' ? 'MSE' : stats.mode} · ${stats.codec || '…'}`,
    `${(stats.bytes / 1e6).toFixed(1)} MB received`];
  if (u) {
    parts.push(u.online ? `${u.viewers} viewer${u.viewers === 1 ? '' : 's'} on this unit ` +
      '(one stream from the unit)' : 'unit offline');
    if (u.recording) parts.push(`recording ${u.incident || ''}`);
  }
  $('live-info').textContent = parts.join(' · ');
}

async function playMse(did, signal) {
  const video = $('live-video');
  const MS = window.MediaSource || window.ManagedMediaSource;
  const ms = new MS();
  video.disableRemotePlayback = true;
  video.src = URL.createObjectURL(ms);
  await new Promise((resolve) => ms.addEventListener('sourceopen', resolve, { once: true }));
  const resp = await Portal.api(`/api/units/${encodeURIComponent(did)}/live.mp4`,
    { cache: 'no-store', signal });
  if (!resp.ok) {
    const d = await resp.json().catch(() => ({}));
    throw new Error(d.error || `live: HTTP ${resp.status}`);
  }
  const reader = resp.body.getReader();
  const head = [];
  let sb = null;
  const queue = [];
  const step = () => {
    if (!sb || sb.updating || ms.readyState !== 'open') return;
    const b = video.buffered;
    if (b.length && video.currentTime - b.start(0) > 2 * KEEP_BEHIND_S) {
      sb.remove(0, video.currentTime - KEEP_BEHIND_S);   // bound the browser's memory
      return;
    }
    if (!queue.length) return;
    sb.appendBuffer(concat(queue.splice(0)));
    stats.appends++;
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    stats.bytes += value.length;
    if (!sb) {
      head.push(value);
      const buf = concat(head);
      if (!initLength(buf)) continue;
      const mime = `video/mp4; codecs="${codecOf(buf.subarray(0, initLength(buf)))}"`;
      if (!MS.isTypeSupported(mime)) throw new Error('browser cannot play ' + mime);
      stats.codec = mime;
      sb = ms.addSourceBuffer(mime);
      sb.addEventListener('updateend', () => { chase(); step(); });
      stats.mode = 'mse';
      setLive('live', 'live');
      queue.push(buf);
    } else {
      queue.push(value);
    }
    step();
  }
  throw new Error('the unit\'s stream ended');
}

// Live, not DVR: stay within MAX_LAG_S of the newest frame; skip gaps left by resyncs.
function chase() {
  const video = $('live-video');
  const b = video.buffered;
  if (!b.length) return;
  const start = b.start(b.length - 1); const end = b.end(b.length - 1);
  if (video.currentTime < start || end - video.currentTime > MAX_LAG_S) {
    video.currentTime = Math.max(start, end - 0.05);
    stats.jumps++;
  }
  if (video.paused) video.play().catch((e) => { stats.lastError = String(e); });
}

// Without MSE (old iOS): the relayed fMP4 as a plain progressive source.
function playDirect(did) {
  stats.mode = 'progressive';
  const video = $('live-video');
  video.src = `/api/units/${encodeURIComponent(did)}/live.mp4`;
  video.play().catch((e) => { stats.lastError = String(e); });
  setLive('live (progressive)', 'live');
}

async function openLive(did) {
  if (view.live && view.live.device === did) return;
  closeLive();
  const abort = new AbortController();
  view.live = { device: did, abort };
  $('live-card').classList.remove('hidden');
  $('live-unit').textContent = did;
  $('d-unit').value = did;
  Object.assign(stats, { bytes: 0, appends: 0, jumps: 0, codec: '', mode: 'none' });
  setLive('connecting', 'stale');
  renderUnits();
  liveInfo();
  $('live-card').scrollIntoView({ block: 'nearest' });
  if (!(window.MediaSource || window.ManagedMediaSource)) return playDirect(did);
  while (view.live && view.live.abort === abort) {
    try {
      await playMse(did, abort.signal);
    } catch (e) {
      if (abort.signal.aborted) return;
      stats.lastError = String(e.message || e);
      setLive(stats.lastError.includes('not connected') ? 'unit offline' : 'reconnecting',
        'stale');
      if (stats.lastError.includes('cannot play')) return playDirect(did);
    }
    stats.reconnects++;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function closeLive() {
  if (!view.live) return;
  view.live.abort.abort();
  view.live = null;
  const video = $('live-video');
  video.removeAttribute('src');
  video.load();
  $('live-card').classList.add('hidden');
  stats.mode = 'none';
  renderUnits();
}

// ------------------------------------------------------------------ start

function showError(e) {
  const box = $('error');
  box.textContent = String(e.message || e);
  box.classList.remove('hidden');
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => box.classList.add('hidden'), 8000);
}

function loop(fn, ms) {
  const run = async () => {
    try { await fn(); } catch (e) { if (String(e.message) !== 'login required') showError(e); }
    setTimeout(run, ms);
  };
  return run();
}

Portal.start('fleet', async () => {
  // The shared header knows Incidents and Audit; the fleet link is added here.
  const nav = document.querySelector('header.top nav');
  if (nav && !nav.querySelector('a[href="/fleet"]')) {
    nav.prepend(Portal.el('a', { href: '/fleet', class: 'active' }, 'Fleet'));
  }
  if (!Portal.may('fleet')) {
    showError('your role may not view the fleet');
    return;
  }
  $('dispatch-card').classList.toggle('hidden', !Portal.may('dispatch'));
  $('sound').addEventListener('click', enableSound);
  $('live-close').addEventListener('click', closeLive);
  $('map').addEventListener('click', mapClick);
  $('dispatch').addEventListener('submit', (ev) => { ev.preventDefault(); sendDispatch(false); });
  $('d-clear').addEventListener('click', () => sendDispatch(true));
  // Where the browser allows sound without a click (kiosk policy), it is on from the start.
  const AC = window.AudioContext || window.webkitAudioContext;
  if (AC) {
    sound.ctx = new AC();
    sound.ctx.onstatechange = soundButton;
  }
  soundButton();
  setInterval(soundTick, 200);
  await Promise.all([loop(pollUnits, UNIT_POLL_MS), loop(pollAlerts, ALERT_POLL_MS)]);
});
