"""ament_python package setup: `colcon build` on a ROS 2 machine, `pip install -e .` in .venv.

Two import packages: the runtime `densehybrid_ros`, and the offline training module, whose sources stay in the
folder training/ but which installs under the project-specific name `densehybrid_training` (package_dir), so that
no generic top-level name such as `training` lands in site-packages or a ROS overlay.
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "densehybrid_ros"
TRAINING = "densehybrid_training"  # import name of the folder training/
TRAINING_DIR = "training"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"])
    + [TRAINING] + [f"{TRAINING}.{sub}" for sub in find_packages(TRAINING_DIR)],
    package_dir={TRAINING: TRAINING_DIR},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
        (f"share/{PACKAGE}/config/model", glob("config/model/*.yaml")),
        (f"share/{PACKAGE}/config/dds", glob("config/dds/*.xml")),
        (f"share/{PACKAGE}/models", glob("models/*.safetensors") + glob("models/*.json") + glob("models/*.md")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="densehybrid_ros developers",
    maintainer_email="densehybrid-ros@example.com",
    description="Open-set semantic segmentation (DenseHybrid) as a ROS 2 perception node",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "densehybrid-demo = densehybrid_ros.tools.demo:main",
            "densehybrid-bench = densehybrid_ros.tools.bench:main",
            "densehybrid-sim = densehybrid_ros.sim.cli:main",
            "densehybrid-eval = densehybrid_ros.evaluation.cli:main",
            "densehybrid-train = densehybrid_training.cli:main",
            "densehybrid_perception = densehybrid_ros.node.perception_node:main",
            "densehybrid-replay = densehybrid_ros.node.replay:main",
            "densehybrid-record = densehybrid_ros.node.record:main",
            "densehybrid-sim-camera = densehybrid_ros.node.sim_camera:main",
            "densehybrid-eval-bag = densehybrid_ros.evaluation.bag_cli:main",
            "densehybrid-rviz = densehybrid_ros.rviz_config:main",
        ],
    },
)
