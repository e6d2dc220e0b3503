"""Run a function on two gloo ranks in fresh processes (the tests' multi-process harness)."""

import socket

import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port free on this host now, for a rendezvous on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(main, *args, nprocs: int = 2) -> None:
    """``main(rank, port, *args)`` on ``nprocs`` spawned processes; raises if any fails."""
    mp.spawn(main, args=(free_port(), *args), nprocs=nprocs, join=True)
