// A sandbox's terminal: xterm.js (embedded under /ui/vendor by scripts/web-assets and the
// build) over the exec WebSocket of docs/streaming.md, with a PTY sized to the panel.

import { ApiError, call, sandboxPath } from './api.js';
import { h, replace } from './dom.js';

const MISSING_ASSETS = 'terminal assets were not built: run scripts/web-assets';

/** bash when the sandbox has it, sh otherwise (a failed `exec` would end a plain sh). */
const LOGIN_SHELL = 'if command -v bash >/dev/null 2>&1; then exec bash -l; else exec /bin/sh -l; fi';

let assetsLoading = null;

/** Loads xterm.js, its fit addon and its stylesheet once; resolves to false when missing. */
function loadTerminalAssets() {
  if (!assetsLoading) {
    const script = (src) => new Promise((resolve) => {
      const element = document.createElement('script');
      element.src = src;
      element.onload = () => resolve(true);
      element.onerror = () => resolve(false);
      document.head.append(element);
    });
    const stylesheet = document.createElement('link');
    stylesheet.rel = 'stylesheet';
    stylesheet.href = '/ui/vendor/xterm.css';
    document.head.append(stylesheet);
    assetsLoading = Promise.all([script('/ui/vendor/xterm.js'), script('/ui/vendor/addon-fit.js')])
      .then(([xterm, fit]) => xterm && fit && 'Terminal' in window && 'FitAddon' in window);
  }
  return assetsLoading;
}

/**
 * The WebSocket URL of a terminal: `POST …/terminal` answers a short-lived URL that
 * carries its own token (a browser cannot put a header on a WebSocket).
 */
async function terminalUrl(sandboxId) {
  try {
    const response = await call('POST', sandboxPath(sandboxId, '/terminal'), { json: {} });
    // Absolute (`ws://host/…`) or relative to this page; http(s) becomes ws(s).
    const url = new URL((await response.json()).url, location.href);
    if (url.protocol === 'http:') url.protocol = 'ws:';
    if (url.protocol === 'https:') url.protocol = 'wss:';
    return url.href;
  } catch (error) {
    // Fallback for servers without the terminal route (it answers "no such route"):
    // the exec WebSocket itself, which works when the server has no API key.
    const noRoute = error instanceof ApiError && (error.status === 404 || error.status === 405 || error.message === 'no such route') && error.code !== 'sandbox_not_found';
    if (!noRoute) throw error;
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    return `${scheme}://${location.host}${sandboxPath(sandboxId, '/exec/ws')}`;
  }
}

export function terminalPanel(sandbox, backend) {
  const state = h('span', { class: 'muted', id: 'terminal-state' });
  const restart = h('button', { class: 'ghost small', hidden: true, onclick: () => connect() }, 'New session');
  const screen = h('div', { class: 'terminal-screen', id: 'terminal' });
  const element = h('section', { class: 'panel terminal-panel' },
    h('div', { class: 'panel-head' }, h('h3', {}, 'Terminal'), state, h('div', { class: 'spacer' }), restart),
    screen);

  let terminal = null;
  let fit = null;
  let socket = null;
  let observer = null;
  let disposed = false;
  const encoder = new TextEncoder();

  const setState = (text, problem = false) => {
    state.textContent = text;
    state.className = problem ? 'error-text' : 'muted';
  };

  const send = (bytes) => {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    const frame = new Uint8Array(bytes.length + 1);
    frame[0] = 0; // channel 0: stdin
    frame.set(bytes, 1);
    socket.send(frame);
  };

  async function ensureTerminal() {
    if (terminal) return true;
    if (!(await loadTerminalAssets())) {
      replace(screen, h('p', { class: 'error-text', id: 'terminal-missing' }, MISSING_ASSETS));
      return false;
    }
    if (disposed) return false;
    terminal = new window.Terminal({
      cursorBlink: true,
      fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
      fontSize: 13,
      scrollback: 5000,
      theme: { background: '#10161d', foreground: '#d8e1e8', cursor: '#7fd1b9', selectionBackground: '#2c4a5a' },
    });
    fit = new window.FitAddon.FitAddon();
    terminal.loadAddon(fit);
    terminal.open(screen);
    fit.fit();
    terminal.onData((data) => send(encoder.encode(data)));
    terminal.onBinary((data) => send(Uint8Array.from(data, (char) => char.charCodeAt(0) & 0xff)));
    terminal.onResize(({ cols, rows }) => {
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: 'resize', cols, rows }));
    });
    observer = new ResizeObserver(() => fit.fit());
    observer.observe(screen);
    return true;
  }

  async function connect() {
    restart.hidden = true;
    if (!(await ensureTerminal())) return;
    if (socket) socket.close();
    setState('connecting…');
    let url;
    try {
      url = await terminalUrl(sandbox.id);
    } catch (error) {
      setState(error.describe ? error.describe() : error.message, true);
      restart.hidden = false;
      return;
    }
    if (disposed) return;
    const session = new WebSocket(url);
    let started = false;
    socket = session;
    session.binaryType = 'arraybuffer';
    session.onopen = () => {
      session.send(JSON.stringify({
        shell: LOGIN_SHELL,
        env: { TERM: 'xterm-256color' },
        tty: { cols: terminal.cols, rows: terminal.rows },
      }));
    };
    session.onmessage = (message) => {
      if (typeof message.data !== 'string') {
        const bytes = new Uint8Array(message.data);
        if (bytes[0] === 1 || bytes[0] === 2) terminal.write(bytes.subarray(1));
        return;
      }
      const control = JSON.parse(message.data);
      if (control.type === 'started') {
        started = true;
        setState('connected');
        terminal.focus();
      } else if (control.type === 'exit') {
        const how = control.signal != null ? `killed by signal ${control.signal}` : `exit code ${control.exit_code}`;
        terminal.write(`\r\n\x1b[2m[session ended: ${how}]\x1b[0m\r\n`);
        setState(`ended (${how})`);
      } else if (control.type === 'error') {
        const error = control.error || {};
        terminal.write(`\r\n\x1b[31m${error.message || 'error'}\x1b[0m\r\n`);
        setState(error.hint ? `${error.message} (${error.hint})` : error.message || 'error', true);
      }
    };
    session.onclose = () => {
      if (socket !== session) return;
      socket = null;
      if (!disposed) {
        if (!started && state.textContent === 'connecting…') {
          // Refused before the shell started: a browser is not told why (401, 404 …).
          setState('the server refused the terminal connection (does it need an API key?)', true);
        } else if (state.textContent === 'connected') {
          setState('disconnected');
        }
        restart.hidden = false;
      }
    };
  }

  const supported = backend && backend.capabilities.pty;
  return {
    element,
    statusChanged(current) {
      if (!supported) {
        replace(screen, h('p', { class: 'muted' }, `The ${current.backend} backend has no terminals.`));
      } else if (current.status === 'running') {
        if (!socket) connect();
      } else {
        setState(`the sandbox is ${current.status}${current.status === 'stopped' ? ': resume it to type' : ''}`);
      }
    },
    dispose() {
      disposed = true;
      if (socket) socket.close();
      if (observer) observer.disconnect();
      if (terminal) terminal.dispose();
    },
  };
}
