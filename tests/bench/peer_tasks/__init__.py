"""Peer task-queue apps for `make bench-peers`: imported only by .venv-peers' python."""
