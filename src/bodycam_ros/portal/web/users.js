// User administration (admin only): the users and their roles, a new user, a new password.
// Only the admin API is used (GET/POST /api/users, POST /api/users/{name}/password); the
// server refuses every other role, this page only says so instead of showing an empty table.
'use strict';

const $ = (id) => document.getElementById(id);

function notice(text, bad = false) {
  $('error').classList.add('hidden');
  const box = bad ? $('error') : $('notice');
  box.textContent = text;
  box.classList.remove('hidden');
  if (!bad) $('error').textContent = '';
}

async function post(path, body) {
  const r = await Portal.api(path, {
    method: 'POST', body: JSON.stringify(body),
    headers: { 'Content-Type': 'application/json' },
  });
  const d = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(d.error || `${path}: HTTP ${r.status}`);
  return d;
}

function passwordCell(u) {
  const { el } = Portal;
  const input = el('input', { type: 'password', size: 14, minlength: 10,
    autocomplete: 'new-password', 'aria-label': `new password for ${u.user}`,
    class: 'new-password' });
  const form = el('form', { class: 'set-password', style: 'display:flex;gap:.4em' }, input,
    el('button', { class: 'plain', type: 'submit' }, 'Set'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await post(`/api/users/${encodeURIComponent(u.user)}/password`,
        { password: input.value });
      input.value = '';
      notice(`password of ${u.user} set; their sessions were closed`);
    } catch (e) {
      notice(String(e.message || e), true);
    }
  });
  return form;
}

function row(u) {
  const { el, utc } = Portal;
  return el('tr', { 'data-user': u.user, 'data-role': u.role },
    el('td', { class: 'mono' }, u.user), el('td', {}, el('b', {}, u.role)),
    el('td', {}, utc(u.created_at)),
    el('td', {}, u.disabled ? el('span', { class: 'badge bad' }, 'disabled')
      : el('span', { class: 'badge ok' }, 'active')),
    el('td', {}, passwordCell(u)));
}

async function load() {
  const d = await Portal.json('/api/users');
  document.querySelector('#users tbody').replaceChildren(...d.items.map(row));
  document.body.dataset.ready = String(Date.now());
}

Portal.start('users', async (me) => {
  if (!me.permissions.includes('users')) {
    document.body.dataset.ready = 'refused';
    throw new Error(`the role ${me.role} may not manage users`);
  }
  $('admin-only').classList.remove('hidden');
  $('list-card').classList.remove('hidden');
  $('create').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = { user: $('new-user').value.trim(), role: $('new-role').value,
      password: $('new-password').value };
    try {
      const u = await post('/api/users', body);
      $('create').reset();
      notice(`created ${u.user} (${u.role})`);
      await load();
    } catch (e) {
      notice(String(e.message || e), true);
    }
  });
  await load();
});
