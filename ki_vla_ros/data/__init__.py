"""Training data: rosbag and LeRobot episodes, VLM JSONL records, the weighted mixture."""
