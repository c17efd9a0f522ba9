"""Plugins: pluggy hook specifications and the plugin manager."""
