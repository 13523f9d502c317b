"""The ``mdt4rec`` command line."""
