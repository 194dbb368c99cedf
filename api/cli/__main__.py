"""``python -m api.cli``: the command line of the running interpreter, whatever PATH says."""

from api.cli import main

main()
