-- CodeGemma completions in Neovim through `codegemma lsp`.
--
-- Neovim 0.12+: inline completions (ghost text) with vim.lsp.inline_completion.
-- Older Neovim (0.7-0.11): the same server as a completion source, in the omnifunc (<C-x><C-o>)
-- or in a completion plugin such as nvim-cmp (it reads textDocument/completion).
--
-- Put this file on your runtimepath (e.g. ~/.config/nvim/lua/codegemma.lua) and call
--   require("codegemma").setup({ filetypes = { "python", "lua" }, settings = { maxTokens = 48 } })

local M = {}

local defaults = {
  cmd = { "codegemma", "lsp" },        -- add "--model", "/path/to/model" for another model
  filetypes = { "python", "javascript", "typescript", "go", "rust", "java", "c", "cpp", "lua", "sh" },
  -- Server settings (sent as initializationOptions and on change): model, maxTokens, temperature,
  -- debounceMs, context, languages, speculative, reusePrompt.
  settings = {},
  accept_key = "<Tab>",                -- accepts the ghost text (Neovim 0.12+)
}

local root_markers = { ".git", "pyproject.toml", "package.json", "go.mod", "Cargo.toml" }
local shared_client_id -- Neovim 0.7 has no vim.lsp.start: one client for the session

-- The server lost step with a buffer (an edit it could not apply, see `codegemma/resync` in the README):
-- send it the buffer's whole text again.
local function resync(_, params, ctx)
  local bufnr = vim.uri_to_bufnr(params.uri)
  local client = vim.lsp.get_client_by_id(ctx.client_id)
  if not client or not vim.api.nvim_buf_is_loaded(bufnr) then
    return
  end
  local text = table.concat(vim.api.nvim_buf_get_lines(bufnr, 0, -1, false), "\n")
  if vim.bo[bufnr].eol then
    text = text .. "\n"
  end
  local version = vim.lsp.util.buf_versions and vim.lsp.util.buf_versions[bufnr] or vim.b[bufnr].changedtick
  client.notify("textDocument/didChange", {
    textDocument = { uri = params.uri, version = version },
    contentChanges = { { text = text } },
  })
end

local function start(opts, bufnr)
  local root = vim.fs and vim.fs.root and vim.fs.root(bufnr, root_markers) or nil
  local config = {
    name = "codegemma",
    cmd = opts.cmd,
    root_dir = root or vim.fn.getcwd(),
    init_options = opts.settings,
    settings = { codegemma = opts.settings },
    handlers = { ["codegemma/resync"] = resync },
  }
  if vim.lsp.start then -- Neovim 0.8+
    return vim.lsp.start(config, { bufnr = bufnr })
  end
  shared_client_id = shared_client_id or vim.lsp.start_client(config)
  if shared_client_id then
    vim.lsp.buf_attach_client(bufnr, shared_client_id)
  end
  return shared_client_id
end

function M.setup(user_opts)
  local opts = vim.tbl_deep_extend("force", defaults, user_opts or {})
  local inline = vim.lsp.inline_completion ~= nil
  vim.api.nvim_create_autocmd("FileType", {
    pattern = opts.filetypes,
    group = vim.api.nvim_create_augroup("codegemma", { clear = true }),
    callback = function(args)
      local client_id = start(opts, args.buf)
      if not client_id then
        return
      end
      if inline then
        vim.lsp.inline_completion.enable(true, { bufnr = args.buf })
      else
        -- Older Neovim: <C-x><C-o> asks the server; the menu shows the completion's first line.
        vim.bo[args.buf].omnifunc = "v:lua.vim.lsp.omnifunc"
      end
    end,
  })
  if inline then
    vim.keymap.set("i", opts.accept_key, function()
      if not vim.lsp.inline_completion.get() then
        return opts.accept_key
      end
    end, { expr = true, replace_keycodes = true, desc = "Accept the CodeGemma completion" })
  end
end

return M
