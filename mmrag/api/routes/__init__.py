"""One router per resource; `v1` gathers the ones that need an API key and a loaded service."""
