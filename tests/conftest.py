"""Shared test settings."""

import torch

# The tests use tiny tensors: one intra-op thread is faster than two, and avoids OpenMP
# barrier stalls when the machine's two cores are also busy with DataLoader workers.
torch.set_num_threads(1)
