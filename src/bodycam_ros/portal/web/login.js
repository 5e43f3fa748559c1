// Login: POST /api/login as JSON, keep the CSRF token for this tab's later requests.
'use strict';

document.getElementById('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const err = document.getElementById('error');
  err.classList.add('hidden');
  const body = JSON.stringify({
    user: document.getElementById('user').value,
    password: document.getElementById('password').value,
  });
  const r = await fetch('/api/login', {
    method: 'POST', credentials: 'same-origin', body,
    headers: { 'Content-Type': 'application/json' },
  });
  const d = await r.json().catch(() => ({}));
  if (!r.ok) {
    err.textContent = d.error || `login failed (HTTP ${r.status})`;
    err.classList.remove('hidden');
    return;
  }
  sessionStorage.setItem(Portal.CSRF_KEY, d.csrf);
  const next = new URLSearchParams(location.search).get('next') || '/';
  // Only a path on this portal, never another site.
  location.href = next.startsWith('/') && !next.startsWith('//') ? next : '/';
});
