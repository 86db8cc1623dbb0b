"""The engine of one connection, in parts that each do one job and decide without I/O.

- ``guard``: what a received frame gets (its decoded value, an error frame, or a close);
- ``watchdog``: what is due when (the idle timeout, heartbeats, rescuing a stalled handler);
- ``closing``: who closes the connection, with which code, and by when.

Each takes the time as an argument and touches no socket, so tests feed it inputs and times;
``rtkit.endpoint`` carries out what they decide.
"""
