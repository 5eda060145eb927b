"""Lifecycle commands: run, pull, balance, rm, gc, verify, config."""
