"""GGUF files: read the container (`format`), rebuild its tokenizer (`vocab`), translate its metadata and
tensors into codegemma's config and parameter names (`convert`), and load or cache it as a checkpoint
directory (`loader`)."""
