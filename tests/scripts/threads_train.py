"""A training whose float reductions depend on the thread count: argv RECORD_PATH THREADS.

Its records from two thread counts are records of two environments: they part in the last
bits at step 0 (the gradients' reduction over the batch is split per thread) and drift.
"""

import sys

import torch

import torchrepro

torch.set_num_threads(int(sys.argv[2]))
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
g = torch.Generator().manual_seed(1)
data = [torch.randn(4096, 64, generator=g) for _ in range(8)]
with torchrepro.record(sys.argv[1], grads=True):
    for x in data:
        loss = model(x).pow(2).mean()
        torchrepro.log(loss=loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
