"""Pure-Python core: knows nothing of ROS. Detectors, geodesy, ring buffer, evidence, upload."""
