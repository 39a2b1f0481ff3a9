"""`python -m rsample.producer` is the `rsample` command."""

from rsample.producer.cli import main

if __name__ == "__main__":
    main()
