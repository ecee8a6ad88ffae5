// Starts `codegemma lsp` over stdio and shows its completions as inline (ghost text) suggestions.
// vscode-languageclient 11 implements textDocument/inlineCompletion (LSP 3.18) as a built-in feature
// (it was a proposed feature before): the client registers VS Code's inline completion provider as
// soon as the server advertises `inlineCompletionProvider`.
const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function settings() {
  const config = vscode.workspace.getConfiguration("codegemma");
  const keys = ["model", "maxTokens", "temperature", "debounceMs", "context", "languages", "speculative", "reusePrompt"];
  return Object.fromEntries(keys.map((key) => [key, config.get(key)]));
}

async function activate(context) {
  const [command, ...args] = vscode.workspace.getConfiguration("codegemma").get("command");
  client = new LanguageClient(
    "codegemma",
    "CodeGemma",
    { command, args, transport: TransportKind.stdio },
    {
      documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
      initializationOptions: settings(),
    },
  );
  context.subscriptions.push(client);
  // Send the server settings only (not `codegemma.command`, which is the extension's own).
  context.subscriptions.push(vscode.workspace.onDidChangeConfiguration((event) => {
    if (event.affectsConfiguration("codegemma") && client.isRunning()) {
      client.sendNotification("workspace/didChangeConfiguration", { settings: settings() });
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
