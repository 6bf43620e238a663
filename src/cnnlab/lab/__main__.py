"""`python -m cnnlab.lab`: forwards to the command, cnnlab.cli.lab."""

from cnnlab.cli.lab import main

if __name__ == "__main__":
    main()
