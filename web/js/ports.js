// A sandbox's exposed ports: each a link to the host address that reaches it, a form to
// expose another, a button to stop exposing one.

import { del, get, post, sandboxPath } from './api.js';
import { attempt, h, replace, toast } from './dom.js';

export function portsPanel(sandbox) {
  const listing = h('div', { id: 'ports-list' });
  const port = h('input', { type: 'number', min: '1', max: '65535', placeholder: 'port in the sandbox', required: true, name: 'port', id: 'port-number' });
  const form = h('form', { class: 'inline-form', id: 'ports-form' }, port, h('button', { class: 'ghost small', type: 'submit' }, 'Expose'));
  const element = h('section', { class: 'panel' }, h('div', { class: 'panel-head' }, h('h3', {}, 'Ports')), listing, form);
  let shown = '';
  let running = sandbox.status === 'running';

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const exposed = await attempt(() => post(sandboxPath(sandbox.id, '/ports'), { port: Number(port.value) }), `expose port ${port.value}`);
    if (exposed) {
      toast(`Port ${exposed.port} is at ${exposed.url}`);
      port.value = '';
      refresh();
    }
  });

  async function refresh() {
    let ports;
    try {
      ({ ports } = await get(sandboxPath(sandbox.id, '/ports')));
    } catch {
      return; // the sandbox view reports the sandbox's own failures
    }
    const key = JSON.stringify(ports);
    if (key === shown) return;
    shown = key;
    replace(listing, ports.length
      ? h('ul', { class: 'plain' }, ports.map((exposed) => h('li', {},
        h('span', { class: 'mono' }, String(exposed.port)), ' → ',
        h('a', { href: exposed.url, target: '_blank', rel: 'noopener noreferrer' }, exposed.url),
        h('button', { class: 'ghost small danger-text', title: `stop exposing ${exposed.port}`, onclick: () => unexpose(exposed.port) }, 'Remove'))))
      : h('p', { class: 'empty' }, 'No port exposed.'));
  }

  async function unexpose(number) {
    await attempt(() => del(sandboxPath(sandbox.id, `/ports/${number}`)), `remove port ${number}`);
    refresh();
  }

  return {
    element,
    refresh: () => running && refresh(),
    statusChanged(current) {
      running = current.status === 'running';
      form.hidden = !running;
      if (running) refresh();
    },
    dispose() {},
  };
}
