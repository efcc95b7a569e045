// Small helpers to build the page without a framework: an element builder, a
// confirmation dialog, notices.

/**
 * `h('button', {class: 'primary', onclick}, 'Create')`: an element with attributes
 * (functions for `on…` become listeners, `false`/`null`/`undefined` are left out) and
 * children (strings become text, never HTML; arrays are flattened, null is skipped).
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else if (name === 'dataset') {
      Object.assign(element.dataset, value);
    } else if (name === 'value' || name === 'checked' || name === 'disabled') {
      element[name] = value;
    } else {
      element.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) {
      append(element, child);
    } else {
      element.append(child instanceof Node ? child : String(child));
    }
  }
}

/** Replaces the children of `element`. */
export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/**
 * Asks the person to confirm: resolves to true when they press the `action` button.
 * A `<dialog>` rather than `window.confirm`, so it looks like the page and names what
 * will happen.
 */
export function confirmDialog({ title, message, action, danger = true }) {
  return new Promise((resolve) => {
    const dialog = h(
      'dialog',
      { class: 'confirm' },
      h('form', { method: 'dialog' },
        h('h3', {}, title),
        h('p', {}, message),
        h('div', { class: 'actions' },
          h('button', { value: 'cancel', class: 'ghost' }, 'Cancel'),
          h('button', { value: 'confirm', class: danger ? 'danger' : 'primary', 'data-confirm': true }, action),
        ),
      ),
    );
    dialog.addEventListener('close', () => {
      resolve(dialog.returnValue === 'confirm');
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** A short notice in the corner; `kind` is `info` or `error`. */
export function toast(message, kind = 'info') {
  const box = document.getElementById('toasts');
  const note = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, message);
  box.append(note);
  setTimeout(() => note.remove(), kind === 'error' ? 8000 : 3500);
}

/** Runs `work`, showing its failure as an error notice; resolves to its result or undefined. */
export async function attempt(work, what) {
  try {
    return await work();
  } catch (error) {
    const text = error.describe ? error.describe() : error.message;
    toast(what ? `${what}: ${text}` : text, 'error');
    return undefined;
  }
}

/** A status word as a coloured badge. */
export function badge(status) {
  return h('span', { class: `badge status-${status}` }, String(status).replace('_', ' '));
}
