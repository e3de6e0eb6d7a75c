"""phase4_scheduler: the serving engine — scheduler, KV-cache manager, model runner, LLM / AsyncEngine, server."""
