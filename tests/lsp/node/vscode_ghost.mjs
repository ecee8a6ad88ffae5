// Drives a real VS Code build (code-server) in headless Chromium over the DevTools protocol: opens a file,
// types at its end, waits for the inline suggestion (ghost text) and takes a screenshot.
// Needs Node 22+ (the global WebSocket). argv: chromium binary, code-server URL (with ?folder=), file name to
// open with Quick Open, text to type, screenshot path. Prints one JSON object: {ghost, line} or {error}.
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [chromium, url, fileName, typed, screenshot] = process.argv.slice(2);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(what, seconds, check) {
  const end = Date.now() + seconds * 1000;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

const profile = mkdtempSync(join(tmpdir(), "chromium-"));
const browser = spawn(chromium, ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
  "--remote-debugging-port=0", `--user-data-dir=${profile}`, "--window-size=1280,800", "about:blank"],
  { stdio: ["ignore", "ignore", "pipe"] });
let stderr = "";
browser.stderr.on("data", (chunk) => { stderr += chunk; });

let ws;
let nextId = 1;
const pending = new Map();
function send(method, params = {}) {
  const id = nextId++;
  ws.send(JSON.stringify({ id, method, params }));
  return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
}
async function evaluate(expression) {
  const { result, exceptionDetails } = await send("Runtime.evaluate", { expression, returnByValue: true });
  if (exceptionDetails) throw new Error(exceptionDetails.text);
  return result.value;
}
async function key(keyName, code, keyCode, modifiers = 0) {
  for (const type of ["keyDown", "keyUp"]) {
    await send("Input.dispatchKeyEvent", { type, key: keyName, code, windowsVirtualKeyCode: keyCode, modifiers });
  }
}

try {
  const port = await until("Chromium's DevTools port", 30, () => {
    const match = stderr.match(/DevTools listening on ws:\/\/127\.0\.0\.1:(\d+)\//);
    return match && match[1];
  });
  const targets = await (await fetch(`http://127.0.0.1:${port}/json`)).json();
  const page = targets.find((t) => t.type === "page");
  ws = new WebSocket(page.webSocketDebuggerUrl);
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  ws.onmessage = (message) => {
    const data = JSON.parse(message.data);
    const waiter = pending.get(data.id);
    if (waiter) {
      pending.delete(data.id);
      if (data.error) waiter.reject(new Error(data.error.message));
      else waiter.resolve(data.result);
    }
  };
  await send("Page.enable");
  await send("Runtime.enable");
  await send("Page.navigate", { url });
  await until("the workbench", 120, () => evaluate("!!document.querySelector('.monaco-workbench .part.editor')"));
  await sleep(3000); // let the workbench settle before it takes keys

  // Quick Open (Ctrl+P), the file name, Enter.
  await key("p", "KeyP", 80, 2);
  await until("Quick Open", 30, () => evaluate("!!document.querySelector('.quick-input-widget:not([style*=\"display: none\"]) input')"));
  await send("Input.insertText", { text: fileName });
  await sleep(1500);
  await key("Enter", "Enter", 13);
  await until("the editor", 60, () => evaluate(
    `[...document.querySelectorAll('.monaco-editor .view-line')].some((l) => l.textContent.length > 0)`));
  await sleep(2000);

  // End of the document (Ctrl+End), then type: VS Code asks the language server for an inline completion.
  // A request that arrives while the model still loads gets no suggestion, and VS Code asks again only on
  // the next keystroke: like a user, retype the last character until one shows.
  await key("End", "End", 35, 2);
  await send("Input.insertText", { text: typed });
  const ghostText = `(() => { const g = [...document.querySelectorAll('.ghost-text-decoration, .ghost-text-decoration-preview, .ghost-text')];
       const text = g.map((e) => e.textContent).join('').replace(/\u00a0/g, ' ');
       return text.trim() ? text : null; })()`;
  let retyped = Date.now();
  const ghost = await until("the ghost text", 180, async () => {
    const text = await evaluate(ghostText);
    if (!text && Date.now() - retyped > 5000) {
      await key("Backspace", "Backspace", 8);
      await send("Input.insertText", { text: typed.slice(-1) });
      retyped = Date.now();
    }
    return text;
  });
  // Monaco renders spaces as no-break spaces.
  const line = await evaluate(
    `[...document.querySelectorAll('.monaco-editor .view-line')].map((l) => l.textContent.replace(/\u00a0/g, ' '))
       .find((t) => t.includes(${JSON.stringify(typed)})) || null`);
  const shot = await send("Page.captureScreenshot", { format: "png" });
  writeFileSync(screenshot, Buffer.from(shot.data, "base64"));
  process.stdout.write(JSON.stringify({ ghost, line }));
} catch (error) {
  process.stdout.write(JSON.stringify({ error: String(error && error.message || error) }));
  if (ws && ws.readyState === WebSocket.OPEN) {
    try {
      const shot = await send("Page.captureScreenshot", { format: "png" });
      writeFileSync(screenshot, Buffer.from(shot.data, "base64"));
    } catch { /* the screenshot of a failure is a bonus */ }
  }
} finally {
  if (ws) ws.close();
  browser.kill();
  process.exit(0);
}
