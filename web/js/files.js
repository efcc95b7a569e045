// A sandbox's file browser: list a directory of the workspace, go into folders, upload
// files into the current one, download and delete.

import { call, del, download, get, sandboxPath } from './api.js';
import { attempt, confirmDialog, h, replace, toast } from './dom.js';
import { age, bytes, joinPath, parentPath } from './format.js';

const ROOT = '/workspace';

export function filesPanel(sandbox) {
  let directory = ROOT;
  let running = sandbox.status === 'running';
  const crumbs = h('div', { class: 'crumbs mono', id: 'files-path' });
  const listing = h('div', { class: 'table-wrap' });
  const picker = h('input', { type: 'file', multiple: true, id: 'files-upload', class: 'visually-hidden' });
  const uploadButton = h('label', { for: 'files-upload', class: 'button ghost small' }, 'Upload');
  const refreshButton = h('button', { class: 'ghost small', onclick: () => list() }, 'Refresh');
  const element = h('section', { class: 'panel files-panel' },
    h('div', { class: 'panel-head' }, h('h3', {}, 'Files'), h('div', { class: 'spacer' }), refreshButton, uploadButton, picker),
    crumbs, listing);

  picker.addEventListener('change', async () => {
    const files = [...picker.files];
    picker.value = '';
    for (const file of files) {
      const path = joinPath(directory, file.name);
      const done = await attempt(() => call('PUT', sandboxPath(sandbox.id, `/files?path=${encodeURIComponent(path)}`), {
        body: file,
        headers: { 'Content-Type': 'application/octet-stream' },
      }), `upload ${file.name}`);
      if (done) toast(`Uploaded ${file.name}`);
    }
    list();
  });

  const showCrumbs = () => {
    const parts = directory.slice(ROOT.length).split('/').filter(Boolean);
    const links = [h('a', { href: '#', onclick: (event) => go(event, ROOT) }, 'workspace')];
    let path = ROOT;
    for (const part of parts) {
      path = joinPath(path, part);
      const target = path;
      links.push(' / ', h('a', { href: '#', onclick: (event) => go(event, target) }, part));
    }
    replace(crumbs, links);
  };

  const go = (event, path) => {
    event.preventDefault();
    directory = path;
    list();
  };

  async function list() {
    showCrumbs();
    if (!running) {
      replace(listing, h('p', { class: 'muted' }, `Files can be browsed while the sandbox is running (it is ${sandbox.status}).`));
      return;
    }
    let result;
    try {
      result = await get(sandboxPath(sandbox.id, `/dirs?path=${encodeURIComponent(directory)}`));
    } catch (error) {
      replace(listing, h('p', { class: 'error-text' }, error.describe ? error.describe() : error.message));
      return;
    }
    const entries = [...result.entries].sort((a, b) => (a.kind === 'dir') === (b.kind === 'dir') ? a.name.localeCompare(b.name) : a.kind === 'dir' ? -1 : 1);
    const now = Date.now();
    const rows = entries.map((entry) => {
      const path = joinPath(directory, entry.name);
      const name = entry.kind === 'dir'
        ? h('a', { href: '#', class: 'dir', onclick: (event) => go(event, path) }, `${entry.name}/`)
        : h('span', { class: entry.kind }, entry.name, entry.link_target ? h('span', { class: 'muted' }, ` → ${entry.link_target}`) : null);
      return h('tr', { dataset: { name: entry.name } },
        h('td', {}, name),
        h('td', { class: 'number' }, entry.kind === 'dir' ? '' : bytes(entry.size)),
        h('td', { class: 'muted', title: new Date(entry.modified_ms).toLocaleString() }, `${age(entry.modified_ms, now)} ago`),
        h('td', { class: 'row-actions' },
          entry.kind === 'file' ? h('button', { class: 'ghost small', title: `download ${entry.name}`, onclick: () => attempt(() => download(sandboxPath(sandbox.id, `/files?path=${encodeURIComponent(path)}`), entry.name), 'download') }, 'Download') : null,
          h('button', { class: 'ghost small danger-text', title: `delete ${entry.name}`, onclick: () => remove(entry, path) }, 'Delete')));
    });
    const up = directory === ROOT ? null : h('tr', {}, h('td', { colspan: 4 }, h('a', { href: '#', onclick: (event) => go(event, parentPath(directory)) }, '../')));
    replace(listing, entries.length || up
      ? h('table', { class: 'list compact', id: 'files-list' }, h('tbody', {}, up, rows))
      : h('p', { class: 'empty', id: 'files-list' }, 'This folder is empty: upload a file.'));
  }

  async function remove(entry, path) {
    const confirmed = await confirmDialog({
      title: `Delete ${entry.name}?`,
      message: entry.kind === 'dir' ? `The folder ${path} and everything in it is deleted.` : `The file ${path} is deleted.`,
      action: 'Delete',
    });
    if (!confirmed) return;
    await attempt(() => del(sandboxPath(sandbox.id, `/files?path=${encodeURIComponent(path)}&recursive=${entry.kind === 'dir'}`)), 'delete');
    list();
  }

  return {
    element,
    statusChanged(current) {
      sandbox = current;
      running = current.status === 'running';
      uploadButton.classList.toggle('disabled', !running);
      picker.disabled = !running;
      list();
    },
    dispose() {},
  };
}
