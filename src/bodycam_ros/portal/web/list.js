// Incident list: filters in the address bar (shareable), newest first, refreshed every 10 s
// so an incident appears here minutes after its seal without a reload. Older/Newer follow the
// API's keyset cursors (after=/before=), so page 1000 loads as fast as page 1; `n` in the
// address bar is only the page number shown.
'use strict';

const PER_PAGE = 25;
const FIELDS = ['unit', 'officer', 'date_from', 'date_to', 'reason', 'verified'];
const $ = (id) => document.getElementById(id);

function query() {
  const q = new URLSearchParams(location.search);
  const out = new URLSearchParams();
  for (const f of FIELDS) if (q.get(f)) out.set(f, q.get(f));
  if (q.get('after')) out.set('after', q.get('after'));
  else if (q.get('before')) out.set('before', q.get('before'));
  out.set('per_page', q.get('per_page') || String(PER_PAGE));
  return out;
}

function pageNumber() {
  return Math.max(1, Number(new URLSearchParams(location.search).get('n') || '1') || 1);
}

function fillForm() {
  const q = new URLSearchParams(location.search);
  for (const f of FIELDS) {
    const input = document.querySelector(`#filters [name="${f}"]`);
    if (input) input.value = q.get(f) || '';
  }
}

function go(params) {
  history.pushState(null, '', '/?' + params.toString());
  load();
}

function verification(item) {
  const { el } = Portal;
  if (item.verified) return el('span', { class: 'badge ok' }, '✓ verified');
  const why = (item.verify_problems || [])[0] || 'not verified';
  return el('span', {}, el('span', { class: 'badge bad' }, '✗ not verified'), ' ',
    el('span', { class: 'muted', style: 'font-size:.85em' }, why.slice(0, 120)));
}

function row(item) {
  const { el, utc, duration } = Portal;
  const href = '/incident?id=' + encodeURIComponent(item.incident_id);
  const len = (typeof item.end_time === 'number' && typeof item.start_time === 'number')
    ? item.end_time - item.start_time : null;
  const tr = el('tr', { class: 'row-link', 'data-incident': item.incident_id,
    'data-verified': String(item.verified), onclick: () => { location.href = href; } },
  el('td', {}, el('a', { href }, utc(item.start_time)),
    item.present ? null : el('div', { class: 'error' }, 'gone from the bucket')),
  el('td', { class: 'mono' }, item.device_id),
  el('td', { class: 'mono' }, item.officer_id || '—'),
  el('td', {}, item.sequence ?? '—'),
  el('td', {}, duration(len)),
  el('td', {}, (item.triggers || []).map((t) => el('span', { class: 'chip' }, t.reason))),
  el('td', { class: 'verification' }, verification(item)));
  return tr;
}

let timer = null;

async function load() {
  clearTimeout(timer);
  const q = query();
  const data = await Portal.json('/api/incidents?' + q.toString());
  const body = document.querySelector('#incidents tbody');
  body.replaceChildren(...data.items.map(row));
  $('none').classList.toggle('hidden', data.items.length > 0);
  const n = pageNumber();
  const total = `${data.total_is_estimate ? 'about ' : ''}${data.total}`;
  const pages = Math.max(1, Math.ceil(data.total / data.per_page));
  $('page-info').textContent = `page ${n} of ${data.total_is_estimate ? 'about ' : ''}` +
    `${pages} · ${total} incident${data.total === 1 ? '' : 's'}`;
  $('prev').disabled = !data.prev && n <= 1;
  $('next').disabled = !data.next;
  $('prev').dataset.cursor = data.prev || '';
  $('next').dataset.cursor = data.next || '';
  document.body.dataset.loaded = String(Date.now());
  timer = setTimeout(() => load().catch(() => null), 10000);
}

Portal.start('list', async () => {
  fillForm();
  $('filters').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const f of FIELDS) {
      const v = document.querySelector(`#filters [name="${f}"]`).value.trim();
      if (v) p.set(f, v);
    }
    go(p);
  });
  $('clear').addEventListener('click', () => { $('filters').reset(); go(new URLSearchParams()); });
  // Keep the filters, move the cursor: Older continues after this page's last row, Newer
  // comes back before its first; the first page needs no cursor (it also shows new ones).
  const page = (d) => {
    const p = new URLSearchParams(location.search);
    p.delete('after');
    p.delete('before');
    p.delete('page');
    const n = pageNumber() + d;
    const cursor = $(d > 0 ? 'next' : 'prev').dataset.cursor;
    if (n > 1 && cursor) {
      p.set(d > 0 ? 'after' : 'before', cursor);
      p.set('n', String(n));
    } else {
      p.delete('n');
    }
    go(p);
  };
  $('prev').addEventListener('click', () => page(-1));
  $('next').addEventListener('click', () => page(1));
  window.addEventListener('popstate', () => { fillForm(); load(); });
  await load();
});
