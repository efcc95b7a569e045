//! The terminal page served at `/<secret>/`: xterm.js (from the node's terminal assets)
//! speaking ttyd's protocol to `/ws`, and its script.

/// Where the page finds xterm.js and its fit add-on, relative to the page.
pub const XTERM_JS: &str = "vendor/xterm.js";
pub const XTERM_CSS: &str = "vendor/xterm.css";
pub const FIT_ADDON_JS: &str = "vendor/addon-fit.js";

/// Response headers of the page and its script: never cached, never sent as a referrer
/// (the URL holds the secret), only this origin's scripts.
pub const SECURITY_HEADERS: [(&str, &str); 4] = [
    ("cache-control", "no-store"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
    (
        "content-security-policy",
        "default-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self' ws: wss:; frame-ancestors 'none'",
    ),
];

/// The page of VM `vm_id`. `secret` is URL-safe base64, so it needs no escaping; the
/// `<base>` makes the relative URLs work with or without the trailing slash.
pub fn page(vm_id: u32, secret: &str) -> String {
    format!(
        r#"<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>cthulu vm {vm_id}</title>
<base href="/{secret}/">
<link rel="stylesheet" href="assets/{XTERM_CSS}">
<style>html, body {{ height: 100%; margin: 0; background: #000; color: #ccc; font-family: monospace; }} #terminal {{ height: 100%; }}</style>
</head>
<body>
<div id="terminal"></div>
<script src="assets/{XTERM_JS}"></script>
<script src="assets/{FIT_ADDON_JS}"></script>
<script src="terminal.js"></script>
</body>
</html>
"#
    )
}

/// The page's script: fetch the token, open `/ws` with subprotocol `tty`, handshake, then
/// `'0'` frames both ways and `'1'` resizes.
pub const SCRIPT: &str = r#""use strict";
(async () => {
  const element = document.getElementById("terminal");
  if (typeof Terminal === "undefined") {
    element.textContent = "The terminal assets (xterm.js) are not built into this node.";
    return;
  }
  const term = new Terminal({ cursorBlink: true, scrollback: 5000 });
  const fit = typeof FitAddon !== "undefined" ? new FitAddon.FitAddon() : null;
  if (fit) term.loadAddon(fit);
  term.open(element);
  if (fit) fit.fit();
  const response = await fetch("token", { cache: "no-store" });
  const { token } = await response.json();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/ws`, ["tty"]);
  socket.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  const send = (command, text) => {
    if (socket.readyState !== WebSocket.OPEN) return;
    const bytes = encoder.encode(text);
    const frame = new Uint8Array(bytes.length + 1);
    frame[0] = command.charCodeAt(0);
    frame.set(bytes, 1);
    socket.send(frame);
  };
  socket.onopen = () => {
    socket.send(encoder.encode(JSON.stringify({ AuthToken: token, columns: term.cols, rows: term.rows })));
    term.focus();
  };
  socket.onmessage = (event) => {
    const data = new Uint8Array(event.data);
    if (data.length === 0) return;
    if (data[0] === 48) term.write(data.subarray(1));
    else if (data[0] === 49) document.title = decoder.decode(data.subarray(1));
  };
  socket.onclose = () => term.write("\r\n\x1b[31m[connection closed]\x1b[0m\r\n");
  term.onData((data) => send("0", data));
  term.onResize(({ cols, rows }) => send("1", JSON.stringify({ columns: cols, rows })));
  window.addEventListener("resize", () => { if (fit) fit.fit(); });
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_its_assets_relative_to_the_secret() {
        let html = page(3, "s3cr3t");
        assert!(html.contains(r#"<base href="/s3cr3t/">"#), "{html}");
        assert!(html.contains("assets/vendor/xterm.js"));
        assert!(html.contains("assets/vendor/xterm.css"));
        assert!(html.contains("assets/vendor/addon-fit.js"));
        assert!(html.contains("terminal.js"));
        assert!(!html.contains("<script>"), "no inline script");
    }

    #[test]
    fn the_script_speaks_ttyd() {
        assert!(SCRIPT.contains(r#"["tty"]"#));
        assert!(SCRIPT.contains("/ws`"));
        assert!(SCRIPT.contains("AuthToken"));
        assert!(SCRIPT.contains(r#"fetch("token""#));
    }
}
