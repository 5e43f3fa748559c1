// The portal's append-only, hash-chained audit table (auditor and admin), newest first.
'use strict';

const PER_PAGE = 100;
const FIELDS = ['user', 'action', 'incident'];
const $ = (id) => document.getElementById(id);

function row(r) {
  const { el, utc } = Portal;
  const details = Object.entries(r.details || {}).filter(([, v]) => v !== null && v !== '')
    .map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`).join(' ');
  const inc = r.incident_id
    ? el('a', { href: '/incident?id=' + encodeURIComponent(r.incident_id), class: 'mono' },
      r.incident_id) : '';
  return el('tr', { 'data-action': r.action, 'data-user': r.user || '' },
    el('td', { class: 'muted' }, r.seq), el('td', {}, utc(r.time)),
    el('td', { class: 'mono' }, r.user || '—'), el('td', {}, el('b', {}, r.action)),
    el('td', {}, inc), el('td', { class: 'mono' }, r.client || ''),
    el('td', {}, r.status ?? ''), el('td', { class: 'muted mono' }, details));
}

async function load() {
  const q = new URLSearchParams(location.search);
  const p = new URLSearchParams();
  for (const f of FIELDS) if (q.get(f)) p.set(f, q.get(f));
  p.set('page', q.get('page') || '1');
  p.set('per_page', String(PER_PAGE));
  const d = await Portal.json('/api/audit?' + p.toString());
  document.querySelector('#audit tbody').replaceChildren(...d.items.map(row));
  const pages = Math.max(1, Math.ceil(d.total / d.per_page));
  $('page-info').textContent = `page ${d.page} of ${pages} · ${d.total} entries`;
  $('prev').disabled = d.page <= 1;
  $('next').disabled = d.page >= pages;
  const c = d.chain || {};
  $('chain').replaceChildren(Portal.el('span', { class: 'badge ' + (c.ok ? 'ok' : 'bad'),
    title: (c.problems || []).join('\n') },
  c.ok ? `✓ hash chain intact at the last full check (${c.rows} rows)` : `✗ hash chain BROKEN: ${(c.problems || [])[0]}`));
  document.body.dataset.ready = '1';
}

function go(p) { history.pushState(null, '', '/audit?' + p.toString()); load(); }

Portal.start('audit', async (me) => {
  if (!me.permissions.includes('audit')) {
    throw new Error(`the role ${me.role} may not read the audit log`);
  }
  const q = new URLSearchParams(location.search);
  for (const f of FIELDS) document.querySelector(`#filters [name="${f}"]`).value = q.get(f) || '';
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
  const page = (dlt) => {
    const p = new URLSearchParams(location.search);
    p.set('page', String(Math.max(1, Number(p.get('page') || '1') + dlt)));
    go(p);
  };
  $('prev').addEventListener('click', () => page(-1));
  $('next').addEventListener('click', () => page(1));
  window.addEventListener('popstate', load);
  await load();
});
