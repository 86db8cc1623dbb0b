"""The engine of one connection, in parts that each do one job and decide without I/O.

- ``guard``: what a received frame gets (its decoded value, an error frame, or a close);
- ``watchdog``: what is due when (the idle timeout, heartbeats, rescuing a stalled handler);
- ``closing``: who closes the connection, with which code, and by when;
- ``outbox``: the bounded queue of frames for the socket and its writer (a slow client can
  only hurt itself);
- ``inbox``: the bounded buffer a stalled handler's frames wait in while the socket is read
  for it.

The first three take the time as an argument and touch no socket, so tests feed them inputs
and times; ``rtkit.endpoint`` carries out what they decide.
"""
