"""bundler: carry deep-learning environments (container images and Python wheels) across an air gap."""

__version__ = "0.1.0"
