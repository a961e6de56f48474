"""qwen35-stack serving runtime: GDN decode kernels, backend registry, vLLM plugin, Ray Serve app."""
