-- CodeGemma completions in Neovim through `codegemma lsp`.
--
-- Neovim 0.12+: inline completions (ghost text) with vim.lsp.inline_completion; `accept_key` accepts.
-- Neovim 0.11: the native completion menu (vim.lsp.completion) opens by itself while you type
-- (autotrigger); <C-y> accepts the item.
-- Older Neovim (0.7-0.10): the same server as a completion source, in the omnifunc (<C-x><C-o>)
-- or in a completion plugin such as nvim-cmp (it reads textDocument/completion).
--
-- Put this file on your runtimepath (e.g. ~/.config/nvim/lua/codegemma.lua) and call
--   require("codegemma").setup({ filetypes = { "python", "lua" }, settings = { maxTokens = 48 } })

local M = {}

local defaults = {
  cmd = { "codegemma", "lsp" },        -- add "--model", "/path/to/model" for another model
  filetypes = { "python", "javascript", "typescript", "go", "rust", "java", "c", "cpp", "lua", "sh" },
  -- Server settings (sent as initializationOptions and on change): model, maxTokens, temperature,
  -- debounceMs, context, languages, speculative, reusePrompt, rerank, candidates, rerankBudgetMs, rerankLines.
  settings = {},
  -- Neovim 0.12+: the key that accepts the ghost text, mapped in the buffers CodeGemma serves only; when
  -- there is nothing to accept it does what the key did before (another plugin's mapping, or itself).
  -- false: no mapping (call vim.lsp.inline_completion.get() from your own).
  accept_key = "<Tab>",
  -- Neovim 0.11: characters that open the completion menu while typing (the server names none, since an
  -- inline-completion server answers at any position); false: only <C-x><C-o> / vim.lsp.completion.get().
  autotrigger = true,
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

-- Every printable ASCII character: a completion may start after any of them.
local function typed_characters()
  local chars = {}
  for byte = 32, 126 do
    chars[#chars + 1] = string.char(byte)
  end
  return chars
end

-- An empty Lua table is sent as a JSON array; the server expects an object.
local function as_object(settings)
  if next(settings) == nil then
    return vim.empty_dict()
  end
  return settings
end

local function start(opts, bufnr)
  local root = vim.fs and vim.fs.root and vim.fs.root(bufnr, root_markers) or nil
  local settings = as_object(opts.settings)
  local config = {
    name = "codegemma",
    cmd = opts.cmd,
    root_dir = root or vim.fn.getcwd(),
    init_options = settings,
    settings = { codegemma = settings },
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

-- What `key` did in insert mode before we mapped it in this buffer, as a function for an <expr> mapping.
local function previous_mapping(key, bufnr)
  local before = vim.api.nvim_buf_call(bufnr, function()
    return vim.fn.maparg(key, "i", false, true)
  end)
  if vim.tbl_isempty(before) then
    return function() return key end
  end
  return function()
    if before.callback then
      local keys = before.callback()
      return before.expr == 1 and keys or ""
    end
    local keys = before.expr == 1 and vim.api.nvim_eval(before.rhs) or before.rhs
    -- A recursive mapping's keys must go through the mappings again, which an <expr> result does not.
    vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(keys, true, true, true),
      before.noremap == 1 and "n" or "m", false)
    return ""
  end
end

local function map_accept_key(key, bufnr)
  local fallback = previous_mapping(key, bufnr)
  vim.keymap.set("i", key, function()
    if vim.lsp.inline_completion.get() then
      return ""
    end
    return fallback()
  end, { buffer = bufnr, expr = true, replace_keycodes = true, desc = "Accept the CodeGemma completion" })
end

-- Called on LspAttach, once the server's capabilities are known.
local function enable_menu(client, bufnr, autotrigger)
  local provider = client.server_capabilities.completionProvider
  if autotrigger and provider then
    provider.triggerCharacters = typed_characters()
  end
  vim.bo[bufnr].completeopt = "menuone,noselect,popup"
  vim.lsp.completion.enable(true, client.id, bufnr, { autotrigger = autotrigger })
end

function M.setup(user_opts)
  local opts = vim.tbl_deep_extend("force", defaults, user_opts or {})
  local inline = vim.lsp.inline_completion ~= nil
  local menu = not inline and vim.lsp.completion ~= nil and vim.lsp.completion.enable ~= nil
  local group = vim.api.nvim_create_augroup("codegemma", { clear = true })
  if menu then
    vim.api.nvim_create_autocmd("LspAttach", {
      group = group,
      callback = function(args)
        local client = vim.lsp.get_client_by_id(args.data.client_id)
        if client and client.name == "codegemma" then
          enable_menu(client, args.buf, opts.autotrigger)
        end
      end,
    })
  end
  vim.api.nvim_create_autocmd("FileType", {
    pattern = opts.filetypes,
    group = group,
    callback = function(args)
      local client_id = start(opts, args.buf)
      if not client_id then
        return
      end
      if inline then
        vim.lsp.inline_completion.enable(true, { bufnr = args.buf })
        if opts.accept_key then
          map_accept_key(opts.accept_key, args.buf)
        end
      elseif not menu then
        -- Older Neovim: <C-x><C-o> asks the server; the menu shows the completion's first line.
        vim.bo[args.buf].omnifunc = "v:lua.vim.lsp.omnifunc"
      end
    end,
  })
end

return M
