// Unit tests of the UI's pure modules (no browser): `node --test web/tests/unit.test.mjs`.
// Run by crates/cthulu-server/tests/it/web_ui.rs.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { age, bytes, diffLines, duration, joinPath, parentPath, parseLabels, resources } from '../js/format.js';
import { SseParser } from '../js/sse.js';

test('durations and ages', () => {
  assert.equal(duration(850), '850ms');
  assert.equal(duration(12_000), '12s');
  assert.equal(duration(5 * 60_000 + 3000), '5m 3s');
  assert.equal(duration(2 * 3_600_000), '2h');
  assert.equal(duration(26 * 3_600_000), '1d 2h');
  assert.equal(age(1000, 61_000), '1m');
  assert.equal(age(1000, 1500), '<1s');
  assert.equal(age(5000, 1000), '<1s', 'a clock running behind never shows a negative age');
});

test('sizes', () => {
  assert.equal(bytes(0), '0 B');
  assert.equal(bytes(1536), '1.5 KiB');
  assert.equal(bytes(20 * 1024 * 1024), '20 MiB');
  assert.equal(bytes(300 * 1024), '300 KiB');
});

test('resources in a few words', () => {
  assert.equal(resources({}), 'default');
  assert.equal(resources(undefined), 'default');
  assert.equal(resources({ memory_mb: 256, cpus: 0.5, pids: 128 }), '256 MiB · 0.5 CPU · 128 pids');
  assert.equal(resources({ memory_mb: 2048, vcpus: 2, disk_mb: 100 }), '2 GiB · 2 vCPU · 100 MiB disk');
});

test('labels are key=value, comma separated', () => {
  assert.deepEqual(parseLabels(''), {});
  assert.deepEqual(parseLabels(' team = a , env=dev,'), { team: 'a', env: 'dev' });
  assert.deepEqual(parseLabels('url=http://x/?a=b'), { url: 'http://x/?a=b' });
  assert.throws(() => parseLabels('team'), /"team" is not key=value/);
  assert.throws(() => parseLabels('=a'), /not key=value/);
});

test('paths stay in the workspace', () => {
  assert.equal(joinPath('/workspace', 'a.txt'), '/workspace/a.txt');
  assert.equal(joinPath('/workspace/', 'a.txt'), '/workspace/a.txt');
  assert.equal(parentPath('/workspace/a/b'), '/workspace/a');
  assert.equal(parentPath('/workspace/a/'), '/workspace');
  assert.equal(parentPath('/workspace'), '/workspace');
  assert.equal(parentPath('/'), '/workspace');
});

test('diff lines are classified', () => {
  const kinds = diffLines('diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old\n+new\n same\nBinary files a/y and b/y differ')
    .map(({ kind }) => kind);
  assert.deepEqual(kinds, ['file', 'file', 'file', 'hunk', 'removed', 'added', 'context', 'file']);
});

test('server-sent events arrive whole, whatever the chunks', () => {
  const stream = 'id: 1\nevent: status\ndata: {"seq":1}\n\n: keep-alive\n\nid: 2\r\nevent: agent\r\ndata: line one\r\ndata: line two\r\n\r\nevent: end\ndata: {}\n\n';
  const expected = [
    { id: '1', event: 'status', data: '{"seq":1}' },
    { id: '2', event: 'agent', data: 'line one\nline two' },
    { id: null, event: 'end', data: '{}' },
  ];
  for (const size of [1, 2, 3, 7, stream.length]) {
    const parser = new SseParser();
    const events = [];
    for (let start = 0; start < stream.length; start += size) events.push(...parser.push(stream.slice(start, start + size)));
    assert.deepEqual(events, expected, `chunks of ${size}`);
  }
});

test('an event without data is dropped, a field without a colon is a name', () => {
  const parser = new SseParser();
  assert.deepEqual(parser.push('event: lonely\n\ndata\n\n'), [{ id: null, event: 'message', data: '' }]);
  assert.deepEqual(parser.push('data: partial'), []);
  assert.deepEqual(parser.push('\n\n'), [{ id: null, event: 'message', data: 'partial' }]);
});
