// One sandbox: its state and actions (stop, resume, destroy with confirmation), its
// terminal, files, ports and checkpoints. The state is refreshed every two seconds.

import { ApiError, del, get, post, sandboxPath } from './api.js';
import { checkpointsPanel } from './checkpoints.js';
import { attempt, badge, confirmDialog, h, replace, toast } from './dom.js';
import { filesPanel } from './files.js';
import { age, resources } from './format.js';
import { portsPanel } from './ports.js';
import { terminalPanel } from './terminal.js';

const REFRESH_MS = 2000;

export function mountSandbox(view, [sandboxId], context) {
  const title = h('h2', { class: 'mono' }, sandboxId);
  const status = h('span', { id: 'sandbox-status' });
  const actions = h('div', { class: 'actions' });
  const facts = h('dl', { class: 'facts' });
  const body = h('div', { class: 'sandbox-body' }, h('p', { class: 'muted' }, 'Loading…'));
  view.append(
    h('div', { class: 'page-head' },
      h('a', { href: '#/', class: 'back' }, '← Sandboxes'),
      title, status, h('div', { class: 'spacer' }), actions),
    h('section', { class: 'panel' }, facts),
    body,
  );

  let sandbox = null;
  let panels = null;
  let timer = null;
  let stopped = false;

  const show = (next) => {
    const previous = sandbox;
    sandbox = next;
    replace(status, badge(sandbox.status));
    showFacts(facts, sandbox);
    // Rebuilt only when the status changes, so a refresh never swaps a button being clicked.
    if (!previous || previous.status !== sandbox.status) {
      showActions(actions, sandbox, context, { stop, resume, destroy });
    }
    if (!panels) {
      const backend = context.info.backends.find((candidate) => candidate.kind === sandbox.backend);
      panels = {
        terminal: terminalPanel(sandbox, backend),
        files: filesPanel(sandbox),
        ports: portsPanel(sandbox),
        // A restore changes the files and restarts the processes: list the files again.
        checkpoints: checkpointsPanel(sandbox, backend, {
          onRestored: () => {
            panels.files.statusChanged(sandbox);
            refresh();
          },
        }),
      };
      replace(body,
        panels.terminal.element,
        h('div', { class: 'columns' },
          panels.files.element,
          h('div', { class: 'stack' }, panels.ports.element, panels.checkpoints.element)));
    }
    if (!previous || previous.status !== sandbox.status) {
      for (const panel of Object.values(panels)) panel.statusChanged(sandbox);
    }
  };

  let refreshing = false;
  let lastFailure = null;
  const refresh = async () => {
    // One refresh at a time: an action's refresh and the timer's must not start two loops.
    if (refreshing) return;
    refreshing = true;
    clearTimeout(timer);
    try {
      const next = await get(sandboxPath(sandboxId));
      if (stopped) return;
      lastFailure = null;
      show(next);
      panels.ports.refresh();
      panels.checkpoints.refresh();
    } catch (error) {
      if (stopped) return;
      if (error instanceof ApiError && error.status === 404) {
        gone();
        return;
      }
      // Once per distinct failure, not at every refresh while it lasts.
      const message = error.describe ? error.describe() : error.message;
      if (message !== lastFailure) toast(message, 'error');
      lastFailure = message;
    } finally {
      refreshing = false;
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  };

  const gone = () => {
    dispose();
    replace(body, h('section', { class: 'panel' },
      h('p', {}, `Sandbox ${sandboxId} does not exist (any more).`),
      h('a', { href: '#/' }, 'Back to the sandboxes')));
    replace(status, badge('destroyed'));
    replace(actions);
  };

  async function stop() {
    const next = await attempt(() => post(sandboxPath(sandboxId, '/stop')), 'stop');
    if (next) show(next);
  }

  async function resume() {
    const next = await attempt(() => post(sandboxPath(sandboxId, '/resume')), 'resume');
    if (next) show(next);
  }

  async function destroy() {
    const confirmed = await confirmDialog({
      title: `Destroy ${sandboxId}?`,
      message: 'Its processes are killed and its files, ports and checkpoints are deleted. This cannot be undone.',
      action: 'Destroy',
    });
    if (!confirmed) return;
    const done = await attempt(async () => {
      await del(sandboxPath(sandboxId));
      return true;
    }, 'destroy');
    if (done) {
      toast(`Sandbox ${sandboxId} destroyed`);
      location.hash = '#/';
    }
  }

  const dispose = () => {
    stopped = true;
    clearTimeout(timer);
    if (panels) for (const panel of Object.values(panels)) panel.dispose();
  };

  refresh();
  return dispose;
}

function showFacts(facts, sandbox) {
  const now = Date.now();
  const rows = [
    ['Backend', sandbox.backend],
    ['Resources', resources(sandbox.resources)],
    ['Network', sandbox.network],
    ['Image', sandbox.image || 'default'],
    ['Created', `${age(sandbox.created_at_ms, now)} ago`],
    ['Ends', sandbox.expires_at_ms ? `in ${age(now, sandbox.expires_at_ms)}` : 'when destroyed'],
  ];
  const labels = Object.entries(sandbox.labels || {});
  if (labels.length) rows.push(['Labels', labels.map(([key, value]) => h('span', { class: 'label' }, `${key}=${value}`))]);
  if (sandbox.status_reason) rows.push(['Reason', sandbox.status_reason]);
  replace(facts, rows.map(([term, value]) => h('div', {}, h('dt', {}, term), h('dd', {}, value))));
}

function showActions(actions, sandbox, context, { stop, resume, destroy }) {
  const backend = context.info.backends.find((candidate) => candidate.kind === sandbox.backend);
  const canStop = backend && backend.capabilities.stop_resume;
  replace(actions,
    sandbox.status === 'running' && canStop ? h('button', { class: 'ghost', id: 'sandbox-stop', onclick: stop }, 'Stop') : null,
    sandbox.status === 'stopped' ? h('button', { class: 'primary', id: 'sandbox-resume', onclick: resume }, 'Resume') : null,
    h('button', { class: 'danger', id: 'sandbox-destroy', onclick: destroy }, 'Destroy'));
}
