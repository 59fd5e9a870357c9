"""What makes dts-server and dts-worker good daemons: logging, PID files, signals, detaching
with a readiness handshake, and sd_notify."""
