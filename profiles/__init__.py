"""The built-in profiles: YAML files shipped as package data (loaded by bundler.profile)."""
