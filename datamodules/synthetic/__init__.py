"""The embedded synthetic benchmark."""
