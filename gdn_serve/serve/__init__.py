"""The Ray Serve application: OpenAI-compatible API over vLLM engines, one LLM deployment per GPU arch."""
