// Agent runs: the list (refreshed every three seconds) and one run with its events as
// they happen (SSE read through fetch, so the API key is sent), its result, cost and the
// diff of what the agent changed.

import { authHeaders, del, download, get } from './api.js';
import { attempt, badge, confirmDialog, h, replace } from './dom.js';
import { age, diffLines, duration } from './format.js';
import { readEventStream } from './sse.js';

const REFRESH_MS = 3000;
const FINAL = ['succeeded', 'failed', 'cancelled', 'timed_out', 'interrupted'];

export function mountRuns(view) {
  const content = h('div', { class: 'table-wrap' }, h('p', { class: 'muted' }, 'Loading…'));
  view.append(h('section', { class: 'panel' },
    h('div', { class: 'panel-head' }, h('h2', {}, 'Agent runs'), h('span', { class: 'muted' }, 'start one with `cthulu agent run` or POST /api/v1/runs')),
    content));
  let timer = null;
  let stopped = false;
  const refresh = async () => {
    try {
      const { runs } = await get('/api/v1/runs');
      if (stopped) return;
      replace(content, runs.length ? runTable(runs) : h('p', { class: 'empty' }, 'No runs yet.'));
    } catch (error) {
      if (!stopped) replace(content, h('p', { class: 'error-text' }, error.describe ? error.describe() : error.message));
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  };
  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function runTable(runs) {
  const now = Date.now();
  return h('table', { class: 'list', id: 'run-list' },
    h('thead', {}, h('tr', {}, ['Run', 'Status', 'Agent', 'Prompt', 'Cost', 'Duration', 'Age'].map((title) => h('th', {}, title)))),
    h('tbody', {}, runs.map((run) => h('tr', { dataset: { runId: run.id } },
      h('td', {}, h('a', { href: `#/runs/${encodeURIComponent(run.id)}`, class: 'mono' }, run.id)),
      h('td', {}, badge(run.status)),
      h('td', {}, run.agent),
      h('td', { class: 'prompt', title: run.prompt }, run.prompt.length > 80 ? `${run.prompt.slice(0, 80)}…` : run.prompt),
      h('td', { class: 'number' }, run.cost_usd != null ? `$${run.cost_usd.toFixed(4)}` : ''),
      h('td', { class: 'number' }, run.duration_ms != null ? duration(run.duration_ms) : ''),
      h('td', {}, age(run.created_at_ms, now))))));
}

export function mountRun(view, [runId]) {
  const status = h('span', { id: 'run-status' });
  const actions = h('div', { class: 'actions' });
  const facts = h('dl', { class: 'facts' });
  const outcome = h('div', { id: 'run-outcome' });
  const events = h('ol', { class: 'events', id: 'run-events' });
  const streamState = h('span', { class: 'muted', id: 'run-stream-state' });
  const changes = h('div', { id: 'run-changes' });
  view.append(
    h('div', { class: 'page-head' },
      h('a', { href: '#/runs', class: 'back' }, '← Runs'),
      h('h2', { class: 'mono' }, runId), status, h('div', { class: 'spacer' }), actions),
    h('section', { class: 'panel' }, facts, outcome),
    h('div', { class: 'columns' },
      h('section', { class: 'panel' }, h('div', { class: 'panel-head' }, h('h3', {}, 'Events'), streamState), events),
      h('section', { class: 'panel' }, h('div', { class: 'panel-head' }, h('h3', {}, 'Changes')), changes)),
  );
  const controller = new AbortController();
  let lastSeq = 0;

  const show = (run) => {
    replace(status, badge(run.status));
    showRunFacts(facts, run);
    replace(outcome,
      h('h4', {}, 'Prompt'), h('pre', { class: 'prompt-text' }, run.prompt),
      run.result ? [h('h4', {}, 'Result'), h('pre', { class: 'result-text', id: 'run-result' }, run.result)] : null,
      run.error ? [h('h4', {}, 'Error'), h('pre', { class: 'error-block' }, run.error)] : null);
    showChanges(changes, run);
    replace(actions, FINAL.includes(run.status) ? null : h('button', { class: 'danger', id: 'run-cancel', onclick: () => cancel(run) }, 'Cancel run'));
  };

  async function cancel(run) {
    const confirmed = await confirmDialog({ title: `Cancel run ${run.id}?`, message: 'The agent is killed; its sandbox is destroyed unless the run keeps it.', action: 'Cancel run' });
    if (!confirmed) return;
    const cancelled = await attempt(() => del(`/api/v1/runs/${encodeURIComponent(run.id)}`), 'cancel');
    if (cancelled) show(cancelled);
  }

  const stream = async () => {
    // Reconnects after a dropped connection, from the last event seen (`?after=`).
    for (let attemptNumber = 0; !controller.signal.aborted; attemptNumber += 1) {
      streamState.textContent = attemptNumber ? 'reconnecting…' : 'live';
      let ended = false;
      try {
        await readEventStream(`/api/v1/runs/${encodeURIComponent(runId)}/events?after=${lastSeq}`, authHeaders(), (event) => {
          if (event.event === 'end') {
            ended = true;
            show(JSON.parse(event.data));
            return;
          }
          const parsed = JSON.parse(event.data);
          lastSeq = Math.max(lastSeq, parsed.seq);
          events.append(eventItem(parsed));
          if (parsed.type === 'status') refreshRun();
        }, controller.signal);
      } catch (error) {
        if (controller.signal.aborted) return;
        streamState.textContent = error.message;
      }
      if (ended) {
        streamState.textContent = `${events.children.length} events`;
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  };

  const refreshRun = async () => {
    const run = await attempt(() => get(`/api/v1/runs/${encodeURIComponent(runId)}`), 'run');
    if (run && !controller.signal.aborted) show(run);
  };

  refreshRun().then(stream);
  return () => controller.abort();
}

function showRunFacts(facts, run) {
  const rows = [
    ['Agent', run.agent],
    ['Backend', run.backend || ''],
    ['Sandbox', run.sandbox_id ? h('a', { href: `#/sandboxes/${encodeURIComponent(run.sandbox_id)}`, class: 'mono' }, run.sandbox_id) : 'none (destroyed)'],
    ['Cost', run.cost_usd != null ? `$${run.cost_usd.toFixed(4)}` : '—'],
    ['Turns', run.turns != null ? String(run.turns) : '—'],
    ['Duration', run.duration_ms != null ? duration(run.duration_ms) : '—'],
    ['Started', `${age(run.created_at_ms)} ago`],
  ];
  if (run.env_names && run.env_names.length) rows.push(['Env', run.env_names.join(', ')]);
  replace(facts, rows.map(([term, value]) => h('div', {}, h('dt', {}, term), h('dd', {}, value))));
}

function showChanges(element, run) {
  if (!run.changes) {
    replace(element, h('p', { class: 'muted' }, FINAL.includes(run.status) ? 'No changes were recorded.' : 'Shown when the run ends.'));
    return;
  }
  const { diff, changed, deleted, diff_truncated: truncated } = run.changes;
  replace(element,
    h('p', {}, `${changed.length} changed, ${deleted.length} deleted`,
      changed.length ? h('button', { class: 'ghost small', onclick: () => attempt(() => download(`/api/v1/runs/${encodeURIComponent(run.id)}/changes.tar`, `${run.id}-changes.tar`), 'download') }, 'Download changes.tar') : null),
    diff ? h('pre', { class: 'diff', id: 'run-diff' }, diffLines(diff).map(({ kind, line }) => h('span', { class: `diff-${kind}` }, `${line}\n`))) : h('p', { class: 'muted' }, 'No diff.'),
    truncated ? h('p', { class: 'muted' }, 'The diff was cut at 4 MiB.') : null);
}

/** One event of a run as a list item: what happened, in a line, details folded. */
function eventItem(event) {
  const time = new Date(event.at_ms).toLocaleTimeString();
  let kind = event.type;
  let text = '';
  let details = null;
  if (event.type === 'status') {
    text = event.message ? `${event.status}: ${event.message}` : event.status;
  } else if (event.type === 'stderr') {
    text = event.line;
  } else if (event.type === 'notice') {
    text = event.message;
  } else if (event.type === 'agent') {
    const agent = event.event || {};
    kind = agent.kind || 'agent';
    switch (agent.kind) {
      case 'init': text = `started${agent.model ? ` (${agent.model})` : ''}${agent.cwd ? ` in ${agent.cwd}` : ''}`; break;
      case 'assistant_text': text = agent.text; break;
      case 'tool_use': text = agent.name; details = JSON.stringify(agent.input, null, 2); break;
      case 'tool_result': text = `${agent.is_error ? 'error: ' : ''}${agent.summary}`; break;
      case 'result': text = `${agent.success ? 'success' : 'failure'}${agent.cost_usd != null ? ` · $${agent.cost_usd.toFixed(4)}` : ''}${agent.turns != null ? ` · ${agent.turns} turns` : ''}`; details = agent.text || null; break;
      case 'output': text = agent.line; break;
      case 'unknown': text = agent.event_type; break;
      case 'malformed': text = agent.error; details = agent.excerpt; break;
      default: text = JSON.stringify(agent);
    }
  }
  return h('li', { class: `event event-${kind}` },
    h('span', { class: 'event-time' }, time),
    h('span', { class: 'event-kind' }, kind.replace('_', ' ')),
    h('div', { class: 'event-text' }, details ? h('details', {}, h('summary', {}, text), h('pre', {}, details)) : text));
}
