// The page's entry point: asks for an API key when the server wants one, loads the
// server's description (/api/v1/info), and shows the view the location's hash names:
//   #/                 sandboxes (list, create)
//   #/sandboxes/<id>   one sandbox (terminal, files, ports, checkpoints, actions)
//   #/runs, #/runs/<id> agent runs
//   #/nodes            nodes and their capacity

import { apiKey, get, onUnauthorized, setApiKey } from './api.js';
import { h, replace } from './dom.js';
import { mountNodes } from './nodes.js';
import { mountRun, mountRuns } from './runs.js';
import { mountSandbox } from './sandbox.js';
import { mountSandboxes } from './sandboxes.js';

const routes = [
  { pattern: /^\/?$/, nav: 'sandboxes', mount: mountSandboxes },
  { pattern: /^\/sandboxes\/([^/]+)$/, nav: 'sandboxes', mount: mountSandbox },
  { pattern: /^\/runs$/, nav: 'runs', mount: mountRuns },
  { pattern: /^\/runs\/([^/]+)$/, nav: 'runs', mount: mountRun },
  { pattern: /^\/nodes$/, nav: 'nodes', mount: mountNodes },
];

const context = { info: null };
let unmount = () => {};

async function boot() {
  onUnauthorized(askForKey);
  document.getElementById('api-key-button').addEventListener('click', () => {
    declined = false;
    askForKey();
  });
  try {
    context.info = await get('/api/v1/info');
  } catch (error) {
    const needsKey = error.status === 401;
    replace(document.getElementById('view'), h('div', { class: 'panel error-panel', id: 'boot-error' },
      h('h2', {}, needsKey ? 'This server needs an API key' : 'The server cannot be reached'),
      h('p', {}, error.describe ? error.describe() : error.message),
      needsKey
        ? h('button', { class: 'primary', onclick: async () => (await askForKey()) && location.reload() }, 'Enter API key')
        : h('button', { class: 'primary', onclick: () => location.reload() }, 'Try again')));
    return;
  }
  showServer(context.info);
  window.addEventListener('hashchange', route);
  route();
}

function showServer(info) {
  const available = info.backends.filter((backend) => backend.available).map((backend) => backend.kind);
  replace(document.getElementById('server-summary'),
    h('span', {}, `v${info.version}`),
    h('span', { title: `available: ${available.join(', ')}` }, `default backend: ${info.default_backend}`));
  document.getElementById('api-key-button').hidden = !info.auth_required;
}

function route() {
  const path = location.hash.replace(/^#/, '') || '/';
  unmount();
  unmount = () => {};
  const view = document.getElementById('view');
  for (const { pattern, nav, mount } of routes) {
    const match = path.match(pattern);
    if (!match) continue;
    for (const link of document.querySelectorAll('[data-nav]')) {
      link.classList.toggle('active', link.dataset.nav === nav);
    }
    replace(view);
    unmount = mount(view, match.slice(1).map(decodeURIComponent), context) || (() => {});
    return;
  }
  replace(view, h('div', { class: 'panel' }, h('h2', {}, 'Nothing here'), h('p', {}, h('a', { href: '#/' }, 'Back to the sandboxes'))));
}

let pendingKey = null;
// Set when the person cancels the dialog: the views' periodic refreshes then fail
// quietly instead of opening it again every two seconds (the "API key" button reopens it).
let declined = false;

/**
 * Asks for an API key (once at a time, however many calls were refused) and stores it;
 * resolves to true when a key was given.
 */
function askForKey(failure) {
  if (pendingKey) return pendingKey;
  if (failure && declined) return Promise.resolve(false);
  pendingKey = new Promise((resolve) => {
    const input = h('input', { type: 'password', name: 'key', autocomplete: 'off', placeholder: 'ck_…', value: apiKey(), required: true });
    const dialog = h('dialog', { class: 'confirm' },
      h('form', { method: 'dialog' },
        h('h3', {}, 'API key'),
        h('p', {}, failure && apiKey() ? 'The server refused this key: ' + failure.message : 'This server needs an API key (create one with `cthulu key create`). It is kept in this browser.'),
        input,
        h('div', { class: 'actions' },
          h('button', { value: 'cancel', class: 'ghost', formnovalidate: true }, 'Cancel'),
          h('button', { value: 'save', class: 'primary' }, 'Use key'))));
    dialog.addEventListener('close', () => {
      const saved = dialog.returnValue === 'save' && input.value.trim() !== '';
      if (saved) setApiKey(input.value);
      declined = !saved;
      dialog.remove();
      pendingKey = null;
      resolve(saved);
    });
    document.body.append(dialog);
    dialog.showModal();
  });
  return pendingKey;
}

boot();
