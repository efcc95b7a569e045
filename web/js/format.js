// Pure formatting and parsing helpers (no DOM), tested by web/tests/unit.test.mjs.

/** `<1s`, `3s`, `5m`, `2h 10m`, `4d 3h`: how long ago `thenMs` was at `nowMs`. */
export function age(thenMs, nowMs = Date.now()) {
  const elapsed = nowMs - thenMs;
  return elapsed < 1000 ? '<1s' : duration(elapsed);
}

/** A duration in milliseconds as `850ms`, `12s`, `5m 3s`, `2h 10m`, `4d 3h`. */
export function duration(ms) {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const seconds = Math.floor(ms / 1000);
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return seconds % 60 ? `${minutes}m ${seconds % 60}s` : `${minutes}m`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return minutes % 60 ? `${hours}h ${minutes % 60}m` : `${hours}h`;
  const days = Math.floor(hours / 24);
  return hours % 24 ? `${days}d ${hours % 24}h` : `${days}d`;
}

/** `512 B`, `1.5 KiB`, `20 MiB`. */
export function bytes(count) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = count;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const text = unit === 0 || value >= 100 ? String(Math.round(value)) : value.toFixed(1).replace(/\.0$/, '');
  return `${text} ${units[unit]}`;
}

/** A sandbox's `resources` in a few words: `256 MiB · 0.5 CPU · 128 pids`; `default` when none. */
export function resources(limits = {}) {
  const parts = [];
  if (limits.memory_mb != null) parts.push(limits.memory_mb >= 1024 && limits.memory_mb % 1024 === 0 ? `${limits.memory_mb / 1024} GiB` : `${limits.memory_mb} MiB`);
  if (limits.vcpus != null) parts.push(`${limits.vcpus} vCPU`);
  if (limits.cpus != null) parts.push(`${limits.cpus} CPU`);
  if (limits.pids != null) parts.push(`${limits.pids} pids`);
  if (limits.disk_mb != null) parts.push(`${limits.disk_mb} MiB disk`);
  return parts.length ? parts.join(' · ') : 'default';
}

/**
 * Labels typed as `team=a, env=dev` → `{team: 'a', env: 'dev'}`. Throws naming the
 * first entry without `=` or with an empty key.
 */
export function parseLabels(text) {
  const labels = {};
  for (const entry of text.split(',').map((part) => part.trim()).filter(Boolean)) {
    const equals = entry.indexOf('=');
    if (equals <= 0) throw new Error(`label "${entry}" is not key=value`);
    labels[entry.slice(0, equals).trim()] = entry.slice(equals + 1).trim();
  }
  return labels;
}

/** `/workspace/a/b` + `c` → `/workspace/a/b/c`. */
export function joinPath(directory, name) {
  return directory.endsWith('/') ? `${directory}${name}` : `${directory}/${name}`;
}

/** The parent of a sandbox path, never above `/workspace`. */
export function parentPath(path) {
  const trimmed = path.replace(/\/+$/, '');
  const slash = trimmed.lastIndexOf('/');
  const parent = slash <= 0 ? '/' : trimmed.slice(0, slash);
  return parent.length < '/workspace'.length ? '/workspace' : parent;
}

/** A unified diff's lines, each with the kind a viewer colours it by. */
export function diffLines(diff) {
  return diff.split('\n').map((line) => {
    let kind = 'context';
    if (line.startsWith('+++') || line.startsWith('---') || line.startsWith('diff ') || line.startsWith('index ')) kind = 'file';
    else if (line.startsWith('@@')) kind = 'hunk';
    else if (line.startsWith('+')) kind = 'added';
    else if (line.startsWith('-')) kind = 'removed';
    else if (line.startsWith('Binary files')) kind = 'file';
    return { kind, line };
  });
}
