"""``python -m radcloud`` is the ``radcloud`` command."""

from radcloud.cli import main

main()
