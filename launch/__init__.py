"""The ``unveil`` command line (``unveil.launch.cli:main``) and the shipped-recipe lookup."""
