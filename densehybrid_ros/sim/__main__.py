import sys

from densehybrid_ros.sim.cli import main

sys.exit(main())
