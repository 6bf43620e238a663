"""`python -m cnnlab.train`: the entry point torchrun and scripts start; the command is cnnlab.cli.train."""

from cnnlab.cli.train import main

if __name__ == "__main__":
    main()
