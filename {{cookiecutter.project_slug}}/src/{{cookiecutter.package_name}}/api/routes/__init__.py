"""One router per file; main.py mounts them with include_router."""
