import sys

from densehybrid_training.cli import main

if __name__ == "__main__":
    sys.exit(main())
