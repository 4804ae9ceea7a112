"""``python -m radcloud`` is the ``radcloud`` command."""

from radcloud.cli import main

if __name__ == "__main__":
    main()
