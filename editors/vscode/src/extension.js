// Starts `codegemma lsp` over stdio and shows its completions as inline (ghost text) suggestions.
// vscode-languageclient 11 implements textDocument/inlineCompletion (LSP 3.18) as a built-in feature
// (it was a proposed feature before): the client registers VS Code's inline completion provider as
// soon as the server advertises `inlineCompletionProvider`.
//
// The extension activates for the languages named in package.json's `activationEvents` only, and serves
// the same languages: one list, so that a window without such a file never starts the server.
const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

const SERVER_SETTINGS = ["model", "maxTokens", "temperature", "debounceMs", "context", "languages", "speculative",
  "reusePrompt", "rerank", "candidates", "rerankBudgetMs", "rerankLines"];

let client;

// The server settings that have a value: a null (`model`, `speculative`) means "the server's default",
// which must not override a `--model` given in `codegemma.command`.
function settings() {
  const config = vscode.workspace.getConfiguration("codegemma");
  return Object.fromEntries(SERVER_SETTINGS.map((key) => [key, config.get(key)])
    .filter(([, value]) => value !== null && value !== undefined));
}

function languages(context) {
  return context.extension.packageJSON.activationEvents
    .filter((event) => event.startsWith("onLanguage:"))
    .map((event) => event.slice("onLanguage:".length));
}

async function activate(context) {
  const [command, ...args] = vscode.workspace.getConfiguration("codegemma").get("command");
  client = new LanguageClient(
    "codegemma",
    "CodeGemma",
    // No `transport`: stdio all the same, but TransportKind.stdio would append `--stdio` to the command,
    // which a `--model` argument list then has to accept (found by running the extension in VS Code).
    { command, args },
    {
      documentSelector: languages(context).flatMap((language) =>
        [{ scheme: "file", language }, { scheme: "untitled", language }]),
      initializationOptions: settings(),
    },
  );
  context.subscriptions.push(client);
  // Send the server settings only (not `codegemma.command`, which is the extension's own). A model set
  // back to null is sent as null: the user asked for the embedded default.
  context.subscriptions.push(vscode.workspace.onDidChangeConfiguration((event) => {
    if (event.affectsConfiguration("codegemma") && client.isRunning()) {
      const changed = settings();
      if (event.affectsConfiguration("codegemma.model") && !("model" in changed)) {
        changed.model = null;
      }
      client.sendNotification("workspace/didChangeConfiguration", { settings: changed });
    }
  }));
  await client.start();
  // The server lost step with a document (an edit it could not apply): send it the whole text again.
  context.subscriptions.push(client.onNotification("codegemma/resync", ({ uri }) => {
    const document = vscode.workspace.textDocuments.find(
      (doc) => client.code2ProtocolConverter.asUri(doc.uri) === uri);
    if (document) {
      client.sendNotification("textDocument/didChange", {
        textDocument: { uri, version: document.version }, contentChanges: [{ text: document.getText() }] });
    }
  }));
}

async function deactivate() {
  if (client) {
    await client.stop();
  }
}

module.exports = { activate, deactivate };
