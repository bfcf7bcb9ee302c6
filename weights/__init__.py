"""Package data: the model manifest, ``models.toml`` (read by :mod:`lipsync.models`)."""
