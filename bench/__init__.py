"""zmesh benchmark harness: ``python -m bench --help``. See bench/README.md."""
