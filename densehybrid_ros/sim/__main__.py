import sys

from densehybrid_ros.sim.cli import main

if __name__ == "__main__":
    sys.exit(main())
