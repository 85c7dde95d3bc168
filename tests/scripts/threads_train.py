"""A training whose float reductions depend on the thread count: argv RECORD_PATH THREADS.

Its records from two thread counts are records of two environments: they part in the last
bits at step 0 and drift. The hidden layer is scaled by its root mean square, a reduction
over 1,048,576 values that torch splits between threads (a matmul's sums need not depend
on the thread count).
"""

import sys

import torch

import torchrepro

torch.set_num_threads(int(sys.argv[2]))
torch.manual_seed(0)


class RMSScaled(torch.nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h / h.square().mean().sqrt()


model = torch.nn.Sequential(
    torch.nn.Linear(64, 256), torch.nn.Tanh(), RMSScaled(), torch.nn.Linear(256, 1)
)
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
