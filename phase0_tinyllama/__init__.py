"""Phase 0 — Roofline in practice: why LLM inference is slow."""
