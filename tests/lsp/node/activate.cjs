// Loads editors/vscode/src/extension.js with stand-ins for `vscode` and `vscode-languageclient/node`, calls
// activate() and prints, as JSON, what it gave the language client and what it sent on a settings change.
// argv: the extension directory, then the `codegemma.*` settings as JSON.
const Module = require("module");
const path = require("path");

const [extensionDir, settingsJson] = process.argv.slice(2);
const settings = JSON.parse(settingsJson);
const seen = { notifications: [] };
let onChange;

const vscode = {
  workspace: {
    getConfiguration: () => ({ get: (key) => settings[key] }),
    onDidChangeConfiguration: (listener) => { onChange = listener; return { dispose() {} }; },
  },
};
class LanguageClient {
  constructor(id, name, serverOptions, clientOptions) {
    Object.assign(seen, { id, serverOptions, clientOptions });
  }
  start() { return Promise.resolve(); }
  stop() { return Promise.resolve(); }
  isRunning() { return true; }
  sendNotification(method, params) { seen.notifications.push({ method, params }); }
  onNotification(method) { (seen.handlers = seen.handlers || []).push(method); return { dispose() {} }; }
  dispose() {}
}
const stubs = { vscode, "vscode-languageclient/node": { LanguageClient, TransportKind: { stdio: 0 } } };
const load = Module._load;
Module._load = function (request, parent, isMain) {
  return request in stubs ? stubs[request] : load.call(this, request, parent, isMain);
};

const packageJSON = require(path.join(extensionDir, "package.json"));
const extension = require(path.join(extensionDir, "src", "extension.js"));
extension.activate({ subscriptions: [], extension: { packageJSON } }).then(() => {
  settings.model = null;
  onChange({ affectsConfiguration: (section) => section === "codegemma" || section === "codegemma.model" });
  process.stdout.write(JSON.stringify(seen));
});
