"""The Ray Serve application: OpenAI API over vLLM engines, one LLM deployment per GPU arch."""
