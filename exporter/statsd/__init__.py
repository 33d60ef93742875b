"""gunicorn's own statsd stream, received and attributed to apps by the kernel.

* `parse`: statsd / dogstatsd lines and gunicorn's metric names (pure functions);
* `stats`: what is kept per app (status counts, a duration histogram, log levels);
* `senders`: the per-sender accumulators the receive path feeds, and how they are folded
  into apps once the sender is attributed;
* `udptable`: the host's UDP sockets (netlink sock_diag, /proc/net/udp as the fallback);
* `attribution`: source address -> socket inode -> the gunicorn process holding it;
* `receiver`: the UDP socket and the event loop's batched reads.

The collector that ties them together is `exporter/collectors/statsd.py`; docs/requests.md
explains the design.
"""
