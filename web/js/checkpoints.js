// A sandbox's checkpoints: take one (named, with memory where the backend can), restore
// one (confirmed: it replaces the sandbox's state), start a new sandbox from a memory
// checkpoint, delete one.

import { del, get, post, sandboxPath } from './api.js';
import { attempt, confirmDialog, h, replace, toast } from './dom.js';
import { age, bytes } from './format.js';

export function checkpointsPanel(sandbox, backend, { onRestored }) {
  const withMemory = backend && backend.capabilities.checkpoint === 'filesystem_and_memory';
  const supported = backend && backend.capabilities.checkpoint !== 'none';
  const listing = h('div', { id: 'checkpoints-list' });
  const name = h('input', { name: 'name', id: 'checkpoint-name', placeholder: 'name (optional)', pattern: '[A-Za-z0-9_][A-Za-z0-9_.\\-]{0,63}', title: 'letters, digits, - _ . (not starting with .)' });
  const memory = h('input', { type: 'checkbox', name: 'memory', checked: withMemory });
  const submit = h('button', { class: 'ghost small', type: 'submit' }, 'Checkpoint');
  const form = h('form', { class: 'inline-form', id: 'checkpoint-form' }, name,
    withMemory ? h('label', { class: 'check' }, memory, ' memory') : null, submit);
  const element = h('section', { class: 'panel' }, h('div', { class: 'panel-head' }, h('h3', {}, 'Checkpoints')),
    supported ? [listing, form] : h('p', { class: 'muted' }, `The ${sandbox.backend} backend has no checkpoints.`));
  let shown = '';

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const request = { memory: withMemory && memory.checked };
    if (name.value.trim()) request.name = name.value.trim();
    submit.disabled = true;
    submit.textContent = 'Saving…';
    const checkpoint = await attempt(() => post(sandboxPath(sandbox.id, '/checkpoints'), request), 'checkpoint');
    submit.disabled = false;
    submit.textContent = 'Checkpoint';
    if (checkpoint) {
      toast(`Checkpoint ${checkpoint.name || checkpoint.id} saved`);
      name.value = '';
      refresh();
    }
  });

  async function refresh() {
    let checkpoints;
    try {
      ({ checkpoints } = await get(sandboxPath(sandbox.id, '/checkpoints')));
    } catch {
      return;
    }
    const key = JSON.stringify(checkpoints);
    if (key === shown) return;
    shown = key;
    const now = Date.now();
    replace(listing, checkpoints.length
      ? h('ul', { class: 'plain checkpoints' }, [...checkpoints].reverse().map((checkpoint) => h('li', { dataset: { checkpoint: checkpoint.name || checkpoint.id } },
        h('div', {},
          h('strong', {}, checkpoint.name || checkpoint.id),
          h('div', { class: 'muted small' }, `${age(checkpoint.created_at_ms, now)} ago · ${bytes(checkpoint.size_bytes)}${checkpoint.memory ? ' · memory' : ''}`)),
        h('div', { class: 'row-actions' },
          h('button', { class: 'ghost small', onclick: () => restore(checkpoint) }, 'Restore'),
          checkpoint.memory ? h('button', { class: 'ghost small', onclick: () => startFrom(checkpoint) }, 'New sandbox') : null,
          h('button', { class: 'ghost small danger-text', onclick: () => remove(checkpoint) }, 'Delete')))))
      : h('p', { class: 'empty' }, 'No checkpoint yet.'));
  }

  async function restore(checkpoint) {
    const label = checkpoint.name || checkpoint.id;
    const confirmed = await confirmDialog({
      title: `Restore ${label}?`,
      message: `The sandbox goes back to checkpoint ${label}: what changed since is lost${checkpoint.memory ? ', processes included' : ' and its processes restart'}.`,
      action: 'Restore',
    });
    if (!confirmed) return;
    const restored = await attempt(() => post(sandboxPath(sandbox.id, `/checkpoints/${encodeURIComponent(checkpoint.id)}/restore`)), 'restore');
    if (restored) {
      toast(`Restored ${label}`);
      onRestored();
    }
  }

  async function startFrom(checkpoint) {
    toast('Starting a new sandbox from the checkpoint…');
    const created = await attempt(() => post('/api/v1/sandboxes', {
      backend: sandbox.backend,
      from_checkpoint: `${sandbox.id}/${checkpoint.id}`,
    }), 'new sandbox');
    if (created) location.hash = `#/sandboxes/${encodeURIComponent(created.id)}`;
  }

  async function remove(checkpoint) {
    const label = checkpoint.name || checkpoint.id;
    const confirmed = await confirmDialog({ title: `Delete checkpoint ${label}?`, message: 'The sandbox is not changed.', action: 'Delete' });
    if (!confirmed) return;
    await attempt(() => del(sandboxPath(sandbox.id, `/checkpoints/${encodeURIComponent(checkpoint.id)}`)), 'delete checkpoint');
    refresh();
  }

  return {
    element,
    refresh: () => supported && refresh(),
    statusChanged(current) {
      form.hidden = !current.status || !['running', 'stopped'].includes(current.status);
      if (supported) refresh();
    },
    dispose() {},
  };
}
