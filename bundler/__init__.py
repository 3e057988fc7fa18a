"""bundler: carry deep-learning environments (container images, Python wheels and models) across an air gap."""

__version__ = "0.3.0"
