// The nodes that run sandboxes for this server, with their capacity (GET /api/v1/nodes),
// refreshed every five seconds. A server without nodes shows "no nodes registered".

import { ApiError, get } from './api.js';
import { badge, h, replace } from './dom.js';

const REFRESH_MS = 5000;

export function mountNodes(view) {
  const content = h('div', { class: 'table-wrap', id: 'nodes' }, h('p', { class: 'muted' }, 'Loading…'));
  view.append(h('section', { class: 'panel' }, h('div', { class: 'panel-head' }, h('h2', {}, 'Nodes')), content));
  let timer = null;
  let stopped = false;
  const refresh = async () => {
    try {
      const answer = await get('/api/v1/nodes');
      // `{nodes: [...]}` like every other list, or a bare array.
      const nodes = Array.isArray(answer) ? answer : answer.nodes;
      if (stopped) return;
      replace(content, nodes && nodes.length ? nodeTable(nodes) : noNodes());
    } catch (error) {
      if (stopped) return;
      // A server without the nodes route (404) has no nodes either.
      replace(content, error instanceof ApiError && (error.status === 404 || error.message === 'no such route')
        ? noNodes()
        : h('p', { class: 'error-text' }, error.describe ? error.describe() : error.message));
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  };
  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function noNodes() {
  return h('p', { class: 'empty' }, 'No nodes registered: sandboxes run on this server.');
}

function nodeTable(nodes) {
  return h('table', { class: 'list' },
    h('thead', {}, h('tr', {}, ['Node', 'Address', 'Reachable', 'Capacity'].map((title) => h('th', {}, title)))),
    h('tbody', {}, nodes.map((node) => {
      const capacity = node.capacity || {};
      const used = capacity.sandboxes ?? 0;
      const max = capacity.max_sandboxes;
      const share = max ? Math.min(100, Math.round((used / max) * 100)) : 0;
      return h('tr', {},
        h('td', {}, h('strong', {}, node.name)),
        h('td', { class: 'mono' }, node.url),
        h('td', {}, badge(node.reachable ? 'reachable' : 'unreachable')),
        h('td', {},
          h('div', { class: 'capacity' },
            h('div', { class: 'meter' }, h('div', { class: share > 85 ? 'fill high' : 'fill', style: `width:${share}%` })),
            h('span', {}, max ? `${used} / ${max} sandboxes` : `${used} sandboxes`))));
    })));
}
