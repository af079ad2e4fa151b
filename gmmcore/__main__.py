"""``python -m gmmcore <verb>``."""
from .cli import main

if __name__ == "__main__":  # guarded: spawned worker processes must not re-run the CLI
    raise SystemExit(main())
