// The sandboxes view: a create form (backend, image, resources, network, lifetime,
// labels) and the list of sandboxes with status, backend, resources and age, refreshed
// every two seconds.

import { get, post } from './api.js';
import { badge, h, replace } from './dom.js';
import { age, parseLabels, resources } from './format.js';

const REFRESH_MS = 2000;

/** The create form's resource fields: request field, limit name in /api/v1/info, label. */
const RESOURCE_FIELDS = [
  { field: 'memory_mb', limit: 'memory', label: 'Memory (MiB)', step: '1', placeholder: 'e.g. 512' },
  { field: 'cpus', limit: 'cpus', label: 'CPUs', step: '0.1', placeholder: 'e.g. 0.5' },
  { field: 'vcpus', limit: 'vcpus', label: 'vCPUs (VM)', step: '1', placeholder: 'e.g. 2' },
  { field: 'pids', limit: 'pids', label: 'Processes', step: '1', placeholder: 'e.g. 256' },
  { field: 'disk_mb', limit: 'disk', label: 'Disk (MiB)', step: '1', placeholder: 'e.g. 2048' },
];

const LIFETIMES = [
  ['', 'until destroyed'],
  ['900', '15 minutes'],
  ['3600', '1 hour'],
  ['28800', '8 hours'],
  ['86400', '1 day'],
];

export function mountSandboxes(view, _params, context) {
  const list = h('div', { class: 'table-wrap' }, h('p', { class: 'muted' }, 'Loading…'));
  const count = h('span', { class: 'count' });
  view.append(
    createPanel(context.info),
    h('section', { class: 'panel' },
      h('div', { class: 'panel-head' }, h('h2', {}, 'Sandboxes ', count)),
      list),
  );
  let timer = null;
  let stopped = false;
  let shown = null;
  const refresh = async () => {
    try {
      const { sandboxes } = await get('/api/v1/sandboxes');
      if (stopped) return;
      count.textContent = String(sandboxes.length);
      // The table is rebuilt only when a sandbox changed (a selection or a hover survives
      // the refresh); otherwise only the ages move on.
      const key = JSON.stringify(sandboxes);
      if (key !== shown) {
        shown = key;
        replace(list, sandboxes.length ? sandboxTable(sandboxes) : h('p', { class: 'empty' }, 'No sandboxes yet: create one above.'));
      } else {
        updateAges(list);
      }
    } catch (error) {
      shown = null;
      if (!stopped) replace(list, h('p', { class: 'error-text' }, error.describe ? error.describe() : error.message));
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  };
  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function sandboxTable(sandboxes) {
  const now = Date.now();
  const sorted = [...sandboxes].sort((a, b) => b.created_at_ms - a.created_at_ms);
  return h('table', { class: 'list', id: 'sandbox-list' },
    h('thead', {}, h('tr', {}, ['Sandbox', 'Status', 'Backend', 'Resources', 'Network', 'Age', 'Labels'].map((title) => h('th', {}, title)))),
    h('tbody', {}, sorted.map((sandbox) => h('tr', { dataset: { sandboxId: sandbox.id } },
      h('td', {}, h('a', { href: `#/sandboxes/${encodeURIComponent(sandbox.id)}`, class: 'mono' }, sandbox.id)),
      h('td', { title: sandbox.status_reason || '' }, badge(sandbox.status)),
      h('td', {}, sandbox.backend),
      h('td', {}, resources(sandbox.resources)),
      h('td', {}, sandbox.network),
      h('td', { title: new Date(sandbox.created_at_ms).toLocaleString() },
        h('span', { dataset: { since: sandbox.created_at_ms } }, age(sandbox.created_at_ms, now)),
        sandbox.expires_at_ms ? h('span', { class: 'muted', dataset: { until: sandbox.expires_at_ms } }, ` (ends in ${age(now, sandbox.expires_at_ms)})`) : null),
      h('td', {}, Object.entries(sandbox.labels || {}).map(([key, value]) => h('span', { class: 'label' }, `${key}=${value}`))),
    ))));
}

function updateAges(list) {
  const now = Date.now();
  for (const element of list.querySelectorAll('[data-since]')) element.textContent = age(Number(element.dataset.since), now);
  for (const element of list.querySelectorAll('[data-until]')) element.textContent = ` (ends in ${age(now, Number(element.dataset.until))})`;
}

function createPanel(info) {
  const backends = info.backends.filter((backend) => backend.available);
  const backendSelect = h('select', { name: 'backend', id: 'create-backend' },
    info.backends.map((backend) => h('option', {
      value: backend.kind,
      disabled: !backend.available,
      selected: backend.kind === info.default_backend,
      title: backend.unavailable_reason || '',
    }, backend.available ? backend.kind : `${backend.kind} (unavailable)`)));
  const image = h('input', { name: 'image', id: 'create-image', placeholder: 'optional' });
  const network = h('select', { name: 'network', id: 'create-network' },
    h('option', { value: 'none' }, 'none (loopback only)'),
    h('option', { value: 'full' }, 'full (outbound)'));
  const lifetime = h('select', { name: 'lifetime', id: 'create-lifetime' },
    LIFETIMES.map(([value, label]) => h('option', { value }, label)));
  const labels = h('input', { name: 'labels', id: 'create-labels', placeholder: 'team=a, purpose=demo' });
  const resourceInputs = RESOURCE_FIELDS.map((spec) => ({
    spec,
    input: h('input', { type: 'number', min: '0', step: spec.step, name: spec.field, id: `create-${spec.field}`, placeholder: spec.placeholder }),
  }));
  const hint = h('p', { class: 'hint' });
  const error = h('p', { class: 'error-text', role: 'alert', id: 'create-error' });
  const submit = h('button', { type: 'submit', class: 'primary', id: 'create-submit' }, 'Create sandbox');

  // What the chosen backend enforces: limits it cannot enforce are disabled, not ignored.
  const describeBackend = () => {
    const backend = info.backends.find((candidate) => candidate.kind === backendSelect.value);
    if (!backend) return;
    for (const { spec, input } of resourceInputs) {
      const support = backend.limits.find((limit) => limit.limit === spec.limit);
      const enforced = support ? support.enforced : true;
      input.disabled = !enforced;
      input.title = support ? support.detail : '';
      if (!enforced) input.value = '';
    }
    image.placeholder = backend.kind === 'qemu' ? 'default' : backend.kind === 'namespace' ? 'rootfs directory (optional)' : 'not used';
    image.disabled = backend.kind === 'host';
    const isolation = backend.capabilities.isolation ? 'isolated' : 'not isolated: trusted work only';
    hint.textContent = `${backend.kind}: ${isolation}; checkpoints: ${backend.capabilities.checkpoint.replaceAll('_', ' ')}.`;
  };
  backendSelect.addEventListener('change', describeBackend);
  describeBackend();

  const form = h('form', { class: 'create-form', id: 'create-form' },
    field('Backend', backendSelect),
    field('Image', image),
    resourceInputs.map(({ spec, input }) => field(spec.label, input)),
    field('Network', network),
    field('Lifetime', lifetime),
    field('Labels', labels, 'wide'),
    h('div', { class: 'form-actions' }, submit),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.textContent = '';
    let request;
    try {
      request = createRequest({ backendSelect, image, network, lifetime, labels, resourceInputs });
    } catch (problem) {
      error.textContent = problem.message;
      return;
    }
    submit.disabled = true;
    submit.textContent = 'Creating…';
    try {
      const sandbox = await post('/api/v1/sandboxes', request);
      location.hash = `#/sandboxes/${encodeURIComponent(sandbox.id)}`;
    } catch (problem) {
      error.textContent = problem.describe ? problem.describe() : problem.message;
    } finally {
      submit.disabled = false;
      submit.textContent = 'Create sandbox';
    }
  });
  return h('section', { class: 'panel' },
    h('div', { class: 'panel-head' }, h('h2', {}, 'New sandbox'),
      backends.length ? null : h('span', { class: 'error-text' }, 'no backend is available on this server')),
    form, hint, error);
}

function field(label, input, extraClass = '') {
  return h('label', { class: `field ${extraClass}` }, h('span', {}, label), input);
}

/** The `CreateSandboxRequest` the form describes. Throws on a malformed label. */
function createRequest({ backendSelect, image, network, lifetime, labels, resourceInputs }) {
  const request = { backend: backendSelect.value, network: network.value, resources: {} };
  if (image.value.trim() && !image.disabled) request.image = image.value.trim();
  if (lifetime.value) request.timeout_secs = Number(lifetime.value);
  const parsedLabels = parseLabels(labels.value);
  if (Object.keys(parsedLabels).length) request.labels = parsedLabels;
  for (const { spec, input } of resourceInputs) {
    if (input.disabled || input.value === '') continue;
    request.resources[spec.field] = Number(input.value);
  }
  return request;
}
