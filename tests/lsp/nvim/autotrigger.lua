-- Neovim 0.11+ headless as the LSP client, with the user set-up from editors/nvim/codegemma.lua: typing
-- in insert mode opens the native completion menu (vim.lsp.completion, autotrigger) and <C-y> accepts.
-- Environment: CODEGEMMA_REPO (repository root), CODEGEMMA_CMD (JSON list: the server command),
-- CODEGEMMA_FILE (a Python file to edit), CODEGEMMA_OUT (where to write what was seen, as JSON).
local repo = os.getenv("CODEGEMMA_REPO")
package.path = repo .. "/editors/nvim/?.lua;" .. package.path
local out = { messages = {} }

local function finish()
  local file = io.open(os.getenv("CODEGEMMA_OUT"), "w")
  file:write(vim.json.encode(out))
  file:close()
  vim.cmd("qall!")
end

-- Everything the server says in the log or as a message: with empty settings it must say nothing.
for _, method in ipairs({ "window/logMessage", "window/showMessage" }) do
  local default = vim.lsp.handlers[method]
  vim.lsp.handlers[method] = function(err, result, ctx, config)
    table.insert(out.messages, result.message)
    return default(err, result, ctx, config)
  end
end

local ok, err = pcall(function()
  require("codegemma").setup({ cmd = vim.json.decode(os.getenv("CODEGEMMA_CMD")), filetypes = { "python" } })
  vim.cmd("filetype on") -- `--clean` starts with file type detection, `-u NONE` without: be explicit
  vim.cmd("edit " .. os.getenv("CODEGEMMA_FILE"))
  local bufnr = vim.api.nvim_get_current_buf()
  local attached = vim.wait(60000, function()
    return #vim.lsp.get_clients({ bufnr = bufnr, name = "codegemma" }) == 1
  end, 50)
  assert(attached, "the set-up did not start the server for a Python buffer")
  local client = vim.lsp.get_clients({ bufnr = bufnr, name = "codegemma" })[1]
  assert(vim.wait(60000, function() return client.initialized end, 50), "the server did not initialize")

  -- Wait for the model: until it is loaded the server answers with no items.
  local params = { textDocument = { uri = vim.uri_from_bufnr(bufnr) }, position = { line = 1, character = 11 } }
  local ready = vim.wait(120000, function()
    local responses = vim.lsp.buf_request_sync(bufnr, "textDocument/completion", params, 5000) or {}
    for _, response in pairs(responses) do
      if response.result and #response.result.items > 0 then
        return true
      end
    end
    return false
  end, 200)
  assert(ready, "the model never answered")

  -- Type as a user: append "squa" to line 2 in insert mode; the menu must open by itself. Typed keys are
  -- read by Neovim's main loop once this script returns, so the rest runs on a timer.
  vim.api.nvim_win_set_cursor(0, { 2, 0 })
  vim.api.nvim_feedkeys("Asqua", "t", false)
  local started, accepted = vim.uv.now(), false
  local timer = vim.uv.new_timer()
  timer:start(50, 20, vim.schedule_wrap(function()
    local done, problem = pcall(function()
      if not accepted then
        local info = vim.fn.complete_info({ "items", "pum_visible" })
        if #info.items > 0 then
          out.mode = vim.api.nvim_get_mode().mode
          out.items = vim.tbl_map(function(item) return item.word end, info.items)
          out.pum_visible = info.pum_visible
          -- Select the item and accept it, then leave insert mode.
          vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes("<C-n><C-y><Esc>", true, true, true), "t", false)
          accepted = true
          return false
        end
        assert(vim.uv.now() - started < 60000, "no completion menu opened while typing")
        return false
      end
      if vim.api.nvim_get_mode().mode ~= "n" then
        return false
      end
      out.line = vim.api.nvim_buf_get_lines(bufnr, 1, 2, false)[1]
      out.offset_encoding = client.offset_encoding
      out.completeopt = vim.bo[bufnr].completeopt
      client:stop()
      out.stopped = vim.wait(10000, function() return client:is_stopped() end, 50)
      return true
    end)
    if not done then
      out.error = tostring(problem)
    end
    if not done or problem == true then
      timer:stop()
      finish()
    end
  end))
end)
if not ok then
  out.error = tostring(err)
  finish()
end
