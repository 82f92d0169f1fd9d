"""``python -m fieldguide.cli``."""

from fieldguide.cli.main import run

if __name__ == "__main__":
    run()
