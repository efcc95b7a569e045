// The web UI in a real headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core; no browser is downloaded). Run by crates/cthulu-server/tests/it/web_ui.rs:
//
//   node web/tests/ui.test.mjs <base url> <artifact dir> [<finished run id> <live run id>]
//
// A person's session: create a sandbox from the form, type `echo hello` in its terminal
// and see `hello` on a line of its own, upload a file and see it listed (its bytes read
// back through the API, downloaded from the page, `cat` in the terminal), serve it from
// the sandbox on an exposed port and follow the port's link, checkpoint, delete the file,
// restore, see it back, stop and resume, the list, the nodes view, the finished run's
// result, events and diff, the live run's events as they come and its cancellation from
// the page, then destroy the sandbox through the confirmation dialog (cancelled once
// first). A page whose terminal files answer 404 (a server built before
// scripts/web-assets) must say so in the terminal panel and keep the rest working.
// Screenshots go to the artifact dir; any request leaving the server, page error or
// console error fails the test.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { check, exitWith, step, withBrowser } from './browser.mjs';

const [baseUrl, artifactDir, runId, liveRunId] = process.argv.slice(2);
if (!baseUrl || !artifactDir) {
  console.error('usage: node web/tests/ui.test.mjs <base url> <artifact dir> [<finished run id> <live run id>]');
  process.exit(2);
}

const UPLOADED_NAME = 'greeting from the browser.txt';
const UPLOADED_TEXT = 'uploaded through the web UI\n';
// A namespace sandbox has its own loopback, but a host sandbox shares the machine's.
const PORT = 20_000 + Math.floor(Math.random() * 20_000);
// Routes another branch adds (the terminal's token URL, the nodes list): until they are
// merged the server answers "no such route", the browser logs it, and the UI falls back.
async function api(path, options) {
  return fetch(new URL(path, baseUrl), options);
}

async function terminalLines(page) {
  return page.$$eval('#terminal .xterm-rows > div', (rows) => rows.map((row) => row.textContent.replace(/\u00a0/g, ' ').trimEnd()));
}

/** Waits for a rendered terminal row (xterm's DOM renderer: one div per row) reading `wanted`. */
async function waitForTerminalLine(page, wanted, what) {
  try {
    await page.waitForFunction((line) => [...document.querySelectorAll('#terminal .xterm-rows > div')]
      .some((row) => row.textContent.replace(/\u00a0/g, ' ').trim() === line), wanted, { timeout: 20_000 });
  } catch {
    throw new Error(`${what}: no terminal line "${wanted}"; the terminal shows:\n${(await terminalLines(page)).filter(Boolean).join('\n')}`);
  }
}

async function typeInTerminal(page, command) {
  await page.click('#terminal');
  await page.keyboard.type(command);
  await page.keyboard.press('Enter');
}

async function confirm(page) {
  await page.click('dialog.confirm[open] button[data-confirm]');
}

async function session({ context, page }) {
  let sandboxId = null;
  try {
    step('open the page');
    await page.goto(`${baseUrl}/`);
    await page.waitForSelector('#create-form');
    await page.waitForSelector('#sandbox-list, .empty');
    check((await page.title()) === 'Cthulu', `the title is ${await page.title()}`);

    step('a malformed label is refused before anything is sent');
    await page.fill('#create-labels', 'made-by');
    await page.click('#create-submit');
    await page.waitForFunction(() => document.querySelector('#create-error')?.textContent === 'label "made-by" is not key=value');
    check(new URL(page.url()).hash === '' || new URL(page.url()).hash === '#/', `the page went to ${page.url()}`);

    step('create a sandbox from the form');
    await page.fill('#create-labels', 'made-by=ui-test');
    await page.click('#create-submit');
    await page.waitForURL(/#\/sandboxes\/[a-z0-9]+$/, { timeout: 60_000 });
    sandboxId = decodeURIComponent(new URL(page.url()).hash.split('/').pop());
    await page.waitForSelector('#sandbox-status .status-running', { timeout: 60_000 });

    step('type `echo hello` in its terminal');
    await page.waitForFunction(() => document.querySelector('#terminal-state')?.textContent === 'connected', null, { timeout: 30_000 })
      .catch(async () => {
        throw new Error(`the terminal did not connect: ${await page.textContent('#terminal-state')} ${await page.textContent('#terminal')}`);
      });
    await typeInTerminal(page, 'echo hello');
    await waitForTerminalLine(page, 'hello', 'echo hello');

    step('upload a file, see it listed, download it');
    await page.setInputFiles('#files-upload', { name: UPLOADED_NAME, mimeType: 'text/plain', buffer: Buffer.from(UPLOADED_TEXT) });
    const listed = `#files-list tr[data-name="${UPLOADED_NAME}"]`;
    await page.waitForSelector(listed);
    const stored = await api(`/api/v1/sandboxes/${sandboxId}/files?path=${encodeURIComponent(`/workspace/${UPLOADED_NAME}`)}`);
    check(stored.ok, `the uploaded file cannot be read back: ${stored.status}`);
    check((await stored.text()) === UPLOADED_TEXT, 'the uploaded file has other bytes than were uploaded');
    const downloading = page.waitForEvent('download');
    await page.click(`${listed} button:text("Download")`);
    const downloaded = await downloading;
    check(downloaded.suggestedFilename() === UPLOADED_NAME, `the download is named ${downloaded.suggestedFilename()}`);
    check((await readFile(await downloaded.path(), 'utf8')) === UPLOADED_TEXT, 'the downloaded file has other bytes than were uploaded');
    await typeInTerminal(page, `cat '${UPLOADED_NAME}'`);
    await waitForTerminalLine(page, UPLOADED_TEXT.trim(), 'cat the uploaded file');

    step('serve it on an exposed port and follow the link');
    await typeInTerminal(page, `python3 -m http.server ${PORT} --bind 127.0.0.1 >/dev/null 2>&1 &`);
    await typeInTerminal(page, `until python3 -c 'import socket; socket.create_connection(("127.0.0.1", ${PORT}))' 2>/dev/null; do sleep 0.2; done; echo port-ready`);
    await waitForTerminalLine(page, 'port-ready', 'the web server in the sandbox');
    await page.fill('#port-number', String(PORT));
    await page.click('#ports-form button[type=submit]');
    const link = await page.waitForSelector('#ports-list a');
    const href = await link.getAttribute('href');
    const served = await fetch(new URL(encodeURIComponent(UPLOADED_NAME), href));
    check(served.ok && (await served.text()) === UPLOADED_TEXT, `the port's link ${href} does not reach the sandbox's server (${served.status})`);
    await page.screenshot({ path: join(artifactDir, 'sandbox.png') });

    step('a server built without the terminal files says how to get them');
    const bare = await context.newPage();
    await bare.route('**/ui/vendor/**', (route) => route.fulfill({ status: 404, body: 'not built' }));
    await bare.goto(`${baseUrl}/#/sandboxes/${sandboxId}`);
    const missing = await bare.textContent('#terminal-missing');
    check(missing === 'terminal assets were not built: run scripts/web-assets', `the terminal panel reads: ${missing}`);
    await bare.waitForSelector(listed);
    await bare.close();

    step('the terminal opens the URL that POST …/terminal answers');
    const tokened = await context.newPage();
    // The real answer passes through; the page must open exactly the URL it names.
    let answered = null;
    await tokened.route('**/api/v1/sandboxes/*/terminal', async (route) => {
      const response = await route.fetch();
      const body = await response.json();
      answered = body.url;
      await route.fulfill({ response, json: body });
    });
    const opened = tokened.waitForEvent('websocket');
    await tokened.goto(`${baseUrl}/#/sandboxes/${sandboxId}`);
    const socketUrl = (await opened).url();
    check(typeof answered === 'string' && answered.includes('token='), `POST …/terminal answered ${answered}`);
    check(socketUrl === new URL(answered, baseUrl.replace(/^http/, 'ws')).href, `the terminal opened ${socketUrl}, the server answered ${answered}`);
    await tokened.waitForFunction(() => document.querySelector('#terminal-state')?.textContent === 'connected');
    await tokened.close();

    step('checkpoint, delete the file, restore: the file is back');
    await page.fill('#checkpoint-name', 'before-delete');
    await page.click('#checkpoint-form button[type=submit]');
    await page.waitForSelector('#checkpoints-list li[data-checkpoint="before-delete"]', { timeout: 60_000 });
    await page.click(`${listed} button[title^="delete"]`);
    await confirm(page);
    await page.waitForSelector(listed, { state: 'detached' });
    await page.click('#checkpoints-list li[data-checkpoint="before-delete"] button:text("Restore")');
    await confirm(page);
    await page.waitForSelector(listed, { timeout: 60_000 });

    if (await page.$('#sandbox-stop')) {
      step('stop and resume');
      await page.click('#sandbox-stop');
      await page.waitForSelector('#sandbox-status .status-stopped');
      await page.click('#sandbox-resume');
      await page.waitForSelector('#sandbox-status .status-running');
      await page.waitForSelector(listed);
    } else {
      step('stop and resume: not offered by this backend');
    }

    step('the list shows it running');
    await page.goto(`${baseUrl}/#/`);
    const row = page.locator(`#sandbox-list tr[data-sandbox-id="${sandboxId}"]`);
    await row.waitFor();
    const rowText = await row.textContent();
    check(rowText.includes('running') && rowText.includes('made-by=ui-test'), `the list row reads: ${rowText}`);
    await page.screenshot({ path: join(artifactDir, 'sandboxes.png') });

    step('the nodes view: none, then two as the nodes route lists them');
    await page.goto(`${baseUrl}/#/nodes`);
    await page.waitForFunction(() => /No nodes registered|Capacity/.test(document.querySelector('#nodes')?.textContent || ''));
    await page.route('**/api/v1/nodes', (route) => route.fulfill({
      status: 200,
      contentType: 'application/json',
      body: JSON.stringify({ nodes: [
        { name: 'kvm-1', url: 'http://10.0.0.5:8081', reachable: true, capacity: { sandboxes: 3, max_sandboxes: 20 } },
        { name: 'kvm-2', url: 'http://10.0.0.6:8081', reachable: false, capacity: { sandboxes: 0, max_sandboxes: 20 } },
      ] }),
    }));
    await page.reload();
    await page.waitForSelector('#nodes table');
    const nodesText = await page.textContent('#nodes');
    check(nodesText.includes('kvm-1') && nodesText.includes('3 / 20 sandboxes') && nodesText.includes('unreachable'), `the nodes view reads: ${nodesText}`);
    await page.screenshot({ path: join(artifactDir, 'nodes.png') });
    await page.unroute('**/api/v1/nodes');

    if (runId) {
      step(`run ${runId}: result, events and diff`);
      await page.goto(`${baseUrl}/#/runs`);
      await page.click(`#run-list tr[data-run-id="${runId}"] a`);
      await page.waitForSelector('#run-result');
      check((await page.textContent('#run-result')).includes('the fix is'), `the result reads: ${await page.textContent('#run-result')}`);
      await page.waitForSelector('#run-events .event-result');
      await page.waitForSelector('#run-diff .diff-added');
      const added = await page.$$eval('#run-diff .diff-added', (lines) => lines.map((line) => line.textContent));
      check(added.some((line) => line.includes('a + b')), `the diff's added lines: ${added.join('')}`);
      await page.screenshot({ path: join(artifactDir, 'run.png'), fullPage: true });
    }

    if (liveRunId) {
      step(`live run ${liveRunId}: its events stream in, then it is cancelled from the page`);
      await page.goto(`${baseUrl}/#/runs/${liveRunId}`);
      await page.waitForSelector('#run-status .status-running');
      await page.waitForSelector('#run-events .event-init');
      await page.waitForSelector('#run-events .event-assistant_text');
      check((await page.textContent('#run-stream-state')) === 'live', `the stream reads: ${await page.textContent('#run-stream-state')}`);
      await page.click('#run-cancel');
      await confirm(page);
      await page.waitForSelector('#run-status .status-cancelled');
      const last = await page.$$eval('#run-events .event-status', (events) => events.at(-1)?.textContent || '');
      check(last.includes('cancelled'), `the last status event reads: ${last}`);
    }

    step('destroy it, cancelling the confirmation once');
    await page.goto(`${baseUrl}/#/sandboxes/${sandboxId}`);
    await page.click('#sandbox-destroy');
    await page.click('dialog.confirm button[value="cancel"]');
    check((await api(`/api/v1/sandboxes/${sandboxId}`)).ok, 'cancelling the confirmation destroyed the sandbox');
    await page.click('#sandbox-destroy');
    await page.waitForSelector('dialog.confirm[open]');
    await page.screenshot({ path: join(artifactDir, 'destroy-confirmation.png') });
    await confirm(page);
    await page.waitForURL(/#\/$/);
    const after = await api(`/api/v1/sandboxes/${sandboxId}`);
    const afterBody = after.ok ? await after.json() : null;
    check(after.status === 404 || afterBody?.status === 'destroyed', `after destroy the sandbox answers ${after.status} ${JSON.stringify(afterBody)}`);
    const destroyed = sandboxId;
    sandboxId = null;
    await page.waitForFunction((id) => !document.querySelector(`#sandbox-list tr[data-sandbox-id="${id}"]`), destroyed);
  } finally {
    // The Rust test destroys what is left too; this keeps a failed run tidy on its own.
    if (sandboxId) await api(`/api/v1/sandboxes/${sandboxId}`, { method: 'DELETE' }).catch(() => {});
  }
}

exitWith(withBrowser({ name: 'session', baseUrl, artifactDir }, session), 'web-ui');
