-- Neovim (0.7+) headless as the LSP client, with the user set-up from editors/nvim/codegemma.lua.
-- Environment: CODEGEMMA_REPO (repository root), CODEGEMMA_CMD (JSON list: the server command),
-- CODEGEMMA_FILE (a Python file to edit), CODEGEMMA_OUT (where to write what was seen, as JSON).
local repo = os.getenv("CODEGEMMA_REPO")
package.path = repo .. "/editors/nvim/?.lua;" .. package.path
local out = {}

local function finish()
  local file = io.open(os.getenv("CODEGEMMA_OUT"), "w")
  file:write(vim.fn.json_encode(out))
  file:close()
  vim.cmd("qall!")
end

local ok, err = pcall(function()
  require("codegemma").setup({
    cmd = vim.fn.json_decode(os.getenv("CODEGEMMA_CMD")),
    filetypes = { "python" },
    settings = { maxTokens = 8, debounceMs = 0 },
  })
  vim.cmd("filetype on") -- `-u NONE` starts without file type detection
  vim.cmd("edit " .. os.getenv("CODEGEMMA_FILE"))
  local bufnr = vim.api.nvim_get_current_buf()
  out.omnifunc = vim.bo[bufnr].omnifunc
  local attached = vim.wait(60000, function() return #vim.lsp.buf_get_clients(bufnr) == 1 end, 50)
  assert(attached, "the set-up did not start the server for a Python buffer")

  -- Edit the buffer the way a user would: Neovim sends the incremental didChange itself.
  local last = vim.api.nvim_buf_line_count(bufnr)
  vim.api.nvim_buf_set_lines(bufnr, last - 1, last, false, { "    return squa" })
  local params = { textDocument = { uri = vim.uri_from_bufnr(bufnr) }, position = { line = last - 1, character = 15 } }

  -- Until the model is loaded the server answers with no items: ask until it has one.
  local items
  vim.wait(120000, function()
    local responses = vim.lsp.buf_request_sync(bufnr, "textDocument/completion", params, 5000) or {}
    for _, response in pairs(responses) do
      if response.result and #response.result.items > 0 then
        items = response.result
      end
    end
    return items ~= nil
  end, 200)
  out.result = items
  if items then
    -- What the omnifunc puts in the menu for the word before the cursor ("squa").
    out.menu = vim.lsp.util.text_document_completion_list_to_complete_items(items, "squa")
  end
  local client = vim.lsp.get_active_clients()[1]
  out.offset_encoding = client and client.offset_encoding
  client.stop()
  vim.wait(10000, function() return client.is_stopped() end, 50)
  out.stopped = client.is_stopped()
end)
if not ok then
  out.error = tostring(err)
end
finish()
