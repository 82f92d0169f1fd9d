"""fieldguide: a data-centric labeling and curation platform for fine-grained visual classification."""

__version__ = "0.1.0"
