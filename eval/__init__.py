"""Evaluation harness: benchmark loaders, a sandbox for model-written code, pass@k scoring, runs, reports."""
