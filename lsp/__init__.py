"""The CodeGemma language server: editors talk LSP to it, it asks `fim` for completions.

`lsp.server` holds the pygls server and its handlers, `lsp.cli` the `codegemma lsp` command and
`lsp.bench` the `codegemma bench lsp` latency benchmark.
"""
