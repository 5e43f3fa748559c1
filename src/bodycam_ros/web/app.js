// bodycam live view: fMP4 over chunked HTTP into Media Source Extensions (MJPEG fallback),
// and the unit's state from a server-sent event stream. Same-origin requests carry the
// HttpOnly session cookie the server set when the page was opened with a token.
'use strict';

const MAX_LAG_S = 0.5;       // behind the newest buffered frame by more: jump to the edge
const KEEP_BEHIND_S = 10;    // buffered video kept behind the playhead
const video = document.getElementById('video');
const img = document.getElementById('mjpeg');
const stats = window.bodycamStats = { mode: 'none', bytes: 0, appends: 0, jumps: 0,
  reconnects: 0, lastError: '' };

function setConn(text, cls) {
  const el = document.getElementById('conn');
  el.textContent = text;
  el.className = 'pill ' + cls;
}

async function playMse() {
  const ms = new MediaSource();
  video.src = URL.createObjectURL(ms);
  await new Promise((resolve) => ms.addEventListener('sourceopen', resolve, { once: true }));
  const resp = await fetch('stream.mp4', { credentials: 'same-origin', cache: 'no-store' });
  if (!resp.ok) throw new Error('stream: HTTP ' + resp.status);
  const mime = `video/mp4; codecs="${resp.headers.get('X-Codec') || 'avc1.42c01f'}"`;
  if (!MediaSource.isTypeSupported(mime)) throw new Error('browser cannot play ' + mime);
  const sb = ms.addSourceBuffer(mime);
  const queue = [];
  stats.mode = 'mse';
  setConn('live', 'live');

  const step = () => {
    if (sb.updating || ms.readyState !== 'open') return;
    const b = video.buffered;
    if (b.length && video.currentTime - b.start(0) > 2 * KEEP_BEHIND_S) {
      sb.remove(0, video.currentTime - KEEP_BEHIND_S);   // bound the browser's memory
      return;
    }
    if (!queue.length) return;
    const total = queue.reduce((n, c) => n + c.length, 0);
    const data = new Uint8Array(total);
    let off = 0;
    for (const c of queue.splice(0)) { data.set(c, off); off += c.length; }
    sb.appendBuffer(data);
    stats.appends++;
  };
  sb.addEventListener('updateend', () => { chase(); step(); });
  const reader = resp.body.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    stats.bytes += value.length;
    queue.push(value);
    step();
  }
  throw new Error('stream ended');
}

// Live, not DVR: stay within MAX_LAG_S of the newest frame; skip gaps left by resyncs.
function chase() {
  const b = video.buffered;
  if (!b.length) return;
  const start = b.start(b.length - 1), end = b.end(b.length - 1);
  if (video.currentTime < start || end - video.currentTime > MAX_LAG_S) {
    video.currentTime = Math.max(start, end - 0.05);
    stats.jumps++;
  }
  if (video.paused) video.play().catch((e) => { stats.lastError = String(e); });
}

function playMjpeg() {
  stats.mode = 'mjpeg';
  video.classList.add('hidden');
  img.classList.remove('hidden');
  img.src = 'mjpeg';
  setConn('live (MJPEG)', 'live');
}

async function runVideo() {
  const mse = window.MediaSource && !location.hash.includes('mjpeg');
  if (!mse) return playMjpeg();
  for (;;) {
    try {
      await playMse();
    } catch (e) {
      stats.lastError = String(e);
      setConn('reconnecting', 'stale');
      if (String(e).includes('cannot play')) return playMjpeg();
    }
    stats.reconnects++;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// ----------------------------------------------------------------------- state
const fmtTime = (t) => new Date(t * 1000).toLocaleTimeString();
const fmtPos = (lat, lon) => (lat == null || lon == null || isNaN(lat) || isNaN(lon))
  ? 'position unknown' : `${lat.toFixed(6)}, ${lon.toFixed(6)}`;

function text(el, value) { if (el.textContent !== value) el.textContent = value; }

function render(s) {
  text(document.getElementById('unit'), s.unit ? '— ' + s.unit : '');
  const banner = document.getElementById('banner');
  if (s.officer_down && s.alert) {
    const a = s.alert;
    text(banner, `OFFICER DOWN — ${a.officer_id || 'officer'} (${a.unit_id || 'unit'}) at ` +
      `${fmtPos(a.latitude, a.longitude)} since ${fmtTime(a.stamp)}`);
    banner.classList.remove('hidden');
    document.title = '⚠ OFFICER DOWN — bodycam live';
  } else {
    banner.classList.add('hidden');
    document.title = 'bodycam live';
  }
  const peer = document.getElementById('peer-banner');
  if (s.peer_alerts && s.peer_alerts.length) {
    text(peer, s.peer_alerts.map((a) => `Officer down nearby: ${a.officer_id || ''} ` +
      `(${a.unit_id}) at ${fmtPos(a.latitude, a.longitude)}` +
      (a.distance_m != null ? `, ${Math.round(a.distance_m)} m away` : '')).join(' · '));
    peer.classList.remove('hidden');
  } else {
    peer.classList.add('hidden');
  }
  const rec = document.getElementById('recorder');
  if (s.recorder) {
    rec.className = '';
    rec.innerHTML = '';
    const pill = document.createElement('span');
    pill.className = 'pill ' + s.recorder.state;
    pill.textContent = s.recorder.state;
    rec.append(pill, ' ', s.recorder.incident_id ? 'incident ' + s.recorder.incident_id : '');
  }
  const pos = document.getElementById('position');
  if (s.position) {
    pos.className = s.position.fix ? '' : 'muted';
    text(pos, `${fmtPos(s.position.latitude, s.position.longitude)} (${fmtTime(s.position.stamp)})`);
  }
  const body = document.querySelector('#triggers tbody');
  if (s.triggers.length) {
    body.innerHTML = '';
    for (const t of s.triggers) {
      const tr = body.insertRow();
      tr.insertCell().textContent = t.source.replace('_', ' ');
      const lvl = tr.insertCell();
      const pill = document.createElement('span');
      pill.className = 'pill ' + t.level;
      pill.textContent = t.level === 'WARN' ? 'ACTIVE' : t.level;
      lvl.append(pill);
      tr.insertCell().textContent = t.message;
      tr.dataset.source = t.source;
      tr.dataset.level = t.level;
    }
  }
  if (s.live) {
    text(document.getElementById('video-info'),
      `${s.live.viewers} viewer(s) · ${s.video_fps} fps from camera · ${stats.mode}`);
  }
}

function runEvents() {
  const es = new EventSource('events');
  es.onmessage = (ev) => render(JSON.parse(ev.data));
  es.onerror = () => setConn('reconnecting', 'stale');  // EventSource retries by itself
}

runEvents();
runVideo();
