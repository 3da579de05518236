"""Moving ops between processes: gRPC channels and servers with their limits, the
blocking and event-loop clients of a worker, the OpStream protocol they share,
and the knobs of gRPC's core and of the event loop that the speed depends on."""
