// A client built on Microsoft's LSP libraries (the ones VS Code's language client uses), so the
// server is checked against an implementation other than its own. Usage:
//   node client.mjs SERVER_COMMAND [ARGS...]
// It initializes, waits for the model, opens a document, edits it incrementally, asks for an inline
// completion and a completion, shuts down, and prints one JSON object with what it saw.
import { spawn } from "node:child_process";
import protocol from "vscode-languageserver-protocol/node";

const {
  createProtocolConnection, StreamMessageReader, StreamMessageWriter,
  InitializeRequest, InitializedNotification, DidOpenTextDocumentNotification,
  DidChangeTextDocumentNotification, InlineCompletionRequest, CompletionRequest, ShutdownRequest,
  ExitNotification, WorkDoneProgressCreateRequest, InlineCompletionTriggerKind,
} = protocol;

const [command, ...args] = process.argv.slice(2);
const server = spawn(command, args, { stdio: ["pipe", "pipe", "inherit"] });
const connection = createProtocolConnection(
  new StreamMessageReader(server.stdout), new StreamMessageWriter(server.stdin));

let resolveReady;
const ready = new Promise((resolve) => { resolveReady = resolve; });
const progress = [];
connection.onRequest(WorkDoneProgressCreateRequest.type, () => null);
connection.onNotification("$/progress", (params) => {
  progress.push(params.value.kind);
  if (params.value.kind === "end") resolveReady();
});
connection.listen();

const uri = "file:///work/project/node.py";
const init = await connection.sendRequest(InitializeRequest.type, {
  processId: process.pid, rootUri: "file:///work/project",
  capabilities: { window: { workDoneProgress: true }, textDocument: { inlineCompletion: {}, completion: {} } },
  initializationOptions: { maxTokens: 8, debounceMs: 0 },
});
await connection.sendNotification(InitializedNotification.type, {});
await ready;
await connection.sendNotification(DidOpenTextDocumentNotification.type, {
  textDocument: { uri, languageId: "python", version: 1, text: "def area(r):\n    return \n" },
});
await connection.sendNotification(DidChangeTextDocumentNotification.type, {
  textDocument: { uri, version: 2 },
  contentChanges: [{ range: { start: { line: 1, character: 11 }, end: { line: 1, character: 11 } }, text: "3.14 * " }],
});
const position = { line: 1, character: 18 };
const inline = await connection.sendRequest(InlineCompletionRequest.type, {
  textDocument: { uri }, position, context: { triggerKind: InlineCompletionTriggerKind.Invoked },
});
const completion = await connection.sendRequest(CompletionRequest.type, { textDocument: { uri }, position });
await connection.sendRequest(ShutdownRequest.type);
await connection.sendNotification(ExitNotification.type);
const code = await new Promise((resolve) => server.on("exit", resolve));
console.log(JSON.stringify({
  capabilities: init.capabilities, progress, inline, completion, exitCode: code,
}));
connection.dispose();
