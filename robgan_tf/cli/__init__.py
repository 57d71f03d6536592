"""The command lines (train.py, evaluate.py, export.py and the console scripts of pyproject.toml)."""
