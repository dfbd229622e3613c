"""The bundled sample dataset (package data) and the script that made it."""
