// The web UI against a server with an API key, in headless Chromium:
//
//   node web/tests/auth.test.mjs <base url> <artifact dir> <key> <sandbox id>
//
// The page asks for a key; cancelled, it says it needs one and offers the dialog again;
// a wrong key is refused and asked for again; the right one loads the page and is kept:
// after a reload the page loads without asking; the sandbox's terminal connects (its
// WebSocket carries a terminal token, as browsers cannot send the key on one).

import { join } from 'node:path';
import { check, exitWith, step, withBrowser } from './browser.mjs';

const [baseUrl, artifactDir, key, sandboxId] = process.argv.slice(2);
if (!baseUrl || !artifactDir || !key || !sandboxId) {
  console.error('usage: node web/tests/auth.test.mjs <base url> <artifact dir> <key> <sandbox id>');
  process.exit(2);
}

// The 401s this test provokes are logged by the browser; they are the point.
const REFUSED = /\/api\/v1\//;

async function session({ page }) {
  step('the page asks for a key');
  await page.goto(`${baseUrl}/`);
  const input = 'dialog.confirm[open] input[name=key]';
  await page.waitForSelector(input);

  step('cancelled, the page says it needs a key and asks no more until told to');
  await page.click('dialog.confirm[open] button[value=cancel]');
  await page.waitForSelector('#boot-error');
  check((await page.textContent('#boot-error h2')) === 'This server needs an API key', `the page reads: ${await page.textContent('#boot-error')}`);
  check(!(await page.$('dialog.confirm[open]')), 'the dialog opened again after a cancel');
  await page.click('#boot-error button');
  await page.waitForSelector(input);

  step('a wrong key is refused and the page asks again');
  await page.fill(input, 'ck_not_a_key');
  await page.click('dialog.confirm[open] button[value=save]');
  await page.waitForFunction(() => /refused/.test(document.querySelector('dialog.confirm[open] p')?.textContent || ''));
  await page.screenshot({ path: join(artifactDir, 'api-key.png') });

  step('the right key loads the page');
  await page.fill(input, key);
  await page.click('dialog.confirm[open] button[value=save]');
  await page.waitForSelector('#create-form');
  await page.waitForSelector('#sandbox-list, .empty');
  check(await page.isVisible('#api-key-button'), 'the API key button is hidden on a server with keys');

  step('the key is kept: a reload asks nothing');
  await page.reload();
  await page.waitForSelector('#sandbox-list, .empty');
  check(!(await page.$('dialog.confirm[open]')), 'the page asked for the key again after a reload');
  const stored = await page.evaluate(() => localStorage.getItem('cthulu.apiKey'));
  check(stored === key, 'the key is not the one kept in localStorage');

  step('a terminal connects with a terminal token');
  const opened = page.waitForEvent('websocket');
  await page.goto(`${baseUrl}/#/sandboxes/${sandboxId}`);
  const socketUrl = (await opened).url();
  check(/[?&]token=/.test(socketUrl) && !socketUrl.includes(key), `the terminal opened ${socketUrl}`);
  await page.waitForFunction(() => document.querySelector('#terminal-state')?.textContent === 'connected');
}

exitWith(withBrowser({ name: 'auth', baseUrl, artifactDir, expectedFailures: REFUSED }, session), 'web-ui auth');
