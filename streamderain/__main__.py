"""``python -m streamderain`` is the ``streamderain`` command."""

from streamderain.cli import main

main()
