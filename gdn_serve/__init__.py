"""qwen35-stack serving runtime: GDN kernels, backend registry, vLLM plugin, Ray Serve app."""
