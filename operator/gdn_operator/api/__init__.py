"""The Qwen35Deployment API: the CRD (one source of truth), its schema helpers and docs, and
the parsed spec. Imports nothing of the operator."""
