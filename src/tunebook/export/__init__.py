"""Exports of a released version to where people run models: merged folders, adapters, GGUF and Ollama."""
