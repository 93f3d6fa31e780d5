"""The sim world: pybullet road scenes with exact labels, depth, camera model and injected anomalies."""
