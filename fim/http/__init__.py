"""HTTP completion API: llama.cpp (/infill), Tabby (/v1/completions) and OpenAI-style (/openai/v1/completions)
routes over fim's one shared model worker, with metrics, auth and request limits."""
from fim.http.app import create_app
from fim.http.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
