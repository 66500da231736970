"""Backends: one module per format family, each registered through the `quantdeploy.backends` entry point."""
