"""Offline training module of densehybrid_ros. It imports the runtime's model code; the runtime never
imports it."""
