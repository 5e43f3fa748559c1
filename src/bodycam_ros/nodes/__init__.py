"""One thin rclpy node per file: parameters, QoS, topics and timers wired to the core."""
