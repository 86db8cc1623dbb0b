"""The engine of one connection, in parts that each do one job.

``guard`` decides what a received frame gets (pure: it takes the frame and the time, and does
no I/O); the endpoint's receive loop carries its verdicts out.
"""
