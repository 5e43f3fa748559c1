"""Where data comes from: devices, files, recordings and simulation. No ROS imports."""
