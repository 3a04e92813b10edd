"""Jinja2 templates rendered into each bundle at compile time."""
