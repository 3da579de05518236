# %% [markdown]
# # The seed notebook, against splitnn's Python API
#
# The PySyft SplitNN notebook (`shared/seed/pysyft_splitnn_notebook.txt`) built five
# `nn.Sequential` segments after `torch.manual_seed(1)`, sent them to alice, bob and
# claire, and trained each data owner in turn for 300 full-batch epochs (SGD, lr
# 0.2, summed squared error), the perimeter segments moving with the owner. Its
# backward pass never worked. Here is the same code on splitnn: real worker
# processes, gradients that reach every segment, and a check against plain PyTorch.
#
# Run it as a script (`python examples/notebook.py`) or cell by cell.

# %%
import copy

import torch
from torch import nn

import splitnn

# %% A toy dataset (cell 3): the label is the fourth feature.
x = torch.tensor(
    [[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 1, 0, 0], [1, 0, 1, 0],
     [0, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1], [1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1],
     [1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1.0]]
)  # fmt: skip
y = torch.tensor([[0.0]] * 8 + [[1.0]] * 8)

torch.manual_seed(1)
models = [
    nn.Sequential(nn.Linear(4, 3), nn.Tanh()),
    nn.Sequential(nn.Linear(3, 3), nn.Sigmoid()),
    nn.Sequential(nn.Linear(3, 3), nn.Sigmoid()),
    nn.Sequential(nn.Linear(3, 2), nn.Tanh()),
    nn.Sequential(nn.Linear(2, 1), nn.Sigmoid()),
]
start = copy.deepcopy(models)  # for the check below

# %% Where each segment lives (cell 4): "owner" is the data owner training now.
placement = ["owner", "alice", "bob", "claire", "owner"]

# %% Train (cells 9-10): each owner holds its own copy of the data, and trains in turn.
trained = splitnn.train(
    segments=models,
    placement=placement,
    data={"alice": (x, y), "bob": (x, y), "claire": (x, y)},
    epochs=300,
    batch_size=0,
    loss="sum_squared_error",
    optimizer={"name": "sgd", "lr": 0.2},
)
with torch.no_grad():
    print("Final Predictions:", trained(x).t())


# %% The same training in one process, as the notebook meant it.
def train_in_one_process(segments):
    model = nn.Sequential(*segments)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    for _owner in ("alice", "bob", "claire"):
        for _epoch in range(300):
            optimizer.zero_grad()
            loss = ((model(x) - y) ** 2).sum()
            loss.backward()
            optimizer.step()
    return model


plain = train_in_one_process(start)
difference = max(
    (a - b).abs().max().item()
    for a, b in zip(trained.state_dict().values(), plain.state_dict().values(), strict=True)
)
print(f"max |weight difference| vs plain PyTorch: {difference:.3g}")
assert difference <= 1e-5
