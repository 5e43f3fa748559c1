"""bodycam_ros: a police body-worn camera as a ROS 2 node graph."""
__version__ = '0.1.0'
