"""``python -m spotmap``: the same as the ``spotmap`` command."""

from spotmap.cli import main

if __name__ == "__main__":
    main()
