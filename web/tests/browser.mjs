// What the browser tests share: Debian's Chromium driven by playwright-core (never a
// downloaded browser), a fresh profile, and a watch on the page that records page errors,
// console errors and any request leaving the server under test.

import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

export function check(condition, message) {
  if (!condition) throw new Error(message);
}

export const step = (text) => console.log(`- ${text}`);

/**
 * Runs `body({context, page, problems})` in a fresh Chromium; console errors for URLs
 * matching `expectedFailures` are not problems. Screenshots `<name>-failure.png` into
 * `artifactDir` when `body` throws (and removes an earlier run's); any recorded problem
 * fails the run too.
 */
export async function withBrowser({ name, baseUrl, artifactDir, expectedFailures = /$^/ }, body) {
  await mkdir(artifactDir, { recursive: true });
  const failureShot = join(artifactDir, `${name}-failure.png`);
  await rm(failureShot, { force: true });
  const profile = await mkdtemp(join(tmpdir(), 'cthulu-ui-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CTHULU_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1360, height: 900 },
  });
  const problems = [];
  const origin = new URL(baseUrl).origin;
  // The page may talk to this server only: no CDN, no font service, nothing else.
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith(origin) || url.startsWith('blob:') || url.startsWith('data:')) return route.continue();
    problems.push(`request outside the server: ${url}`);
    return route.abort();
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(30_000);
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() !== 'error') return;
    const url = message.location().url || '';
    if (expectedFailures.test(url)) return;
    problems.push(`console error: ${message.text()} (${url})`);
  });
  try {
    await body({ context, page, problems });
    check(problems.length === 0, problems.join('\n'));
  } catch (error) {
    await page.screenshot({ path: failureShot, fullPage: true }).catch(() => {});
    const extra = problems.length ? `\n${problems.join('\n')}` : '';
    throw new Error(`${error.message}${extra}`);
  } finally {
    await context.close();
    await rm(profile, { recursive: true, force: true });
  }
}

/** Exits 0 when `promise` resolves, 1 with the reason when it rejects. */
export function exitWith(promise, name) {
  promise.then(
    () => {
      console.log(`ok ${name}`);
      process.exit(0);
    },
    (error) => {
      console.error(`${name} test failed: ${error.message}`);
      process.exit(1);
    },
  );
}
