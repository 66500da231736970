"""quantdeploy's version, in one place (the package, the server's system_fingerprint, reports)."""

__version__ = "0.1.0"
