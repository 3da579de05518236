"""The built-in toy set and the seed's first segment are the notebook's own (cell 3, cell 6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from splitnn.data.datasets import TOY_NAME, builtin, toy_arrays
from splitnn.orchestrator.config import load_config
from splitnn.orchestrator.demo import first_segment_outputs

ROOT = Path(__file__).resolve().parent.parent

# Cell 3 of the notebook, as written there.
NOTEBOOK_X = [[0,0,0,0],[1,0,0,0],[0,1,0,0],[0,0,1,0],[1,1,0,0],[1,0,1,0],[0,1,1,0],[1,1,1,0],[0,0,0,1],[1,0,0,1],[0,1,0,1],[0,0,1,1],[1,1,0,1],[1,0,1,1],[0,1,1,1],[1,1,1,1.]]  # noqa: E231,E501  # fmt: skip
NOTEBOOK_Y = [[0],[0],[0],[0],[0],[0],[0],[0],[1],[1],[1],[1],[1],[1],[1],[1.]]  # noqa: E231  # fmt: skip

# Cell 6 printed segment 0's output on the 16 rows; its last row was cut off after two values.
NOTEBOOK_FIRST_OUTPUTS = [
    [0.1806, -0.1924, -0.0364],
    [0.4138, -0.5821, 0.0330],
    [-0.0381, 0.1046, -0.0974],
    [0.0855, -0.2892, 0.1019],
    [0.2161, -0.3502, -0.0282],
    [0.3304, -0.6460, 0.1701],
    [-0.1342, 0.0021, 0.0410],
    [0.1220, -0.4370, 0.1101],
    [0.3947, 0.0595, -0.0118],
    [0.5882, -0.3895, 0.0577],
    [0.1941, 0.3447, -0.0729],
    [0.3098, -0.0433, 0.1262],
    [0.4254, -0.1109, -0.0035],
    [0.5212, -0.4731, 0.1939],
    [0.0993, 0.2510, 0.0656],
]
NOTEBOOK_LAST_ROW_PREFIX = [0.3428, -0.2110]


def notebook_models() -> list[nn.Sequential]:
    """Cell 3's five segments, built after torch.manual_seed(1) as the notebook did."""
    torch.manual_seed(1)
    return [
        nn.Sequential(nn.Linear(4, 3), nn.Tanh()),
        nn.Sequential(nn.Linear(3, 3), nn.Sigmoid()),
        nn.Sequential(nn.Linear(3, 3), nn.Sigmoid()),
        nn.Sequential(nn.Linear(3, 2), nn.Tanh()),
        nn.Sequential(nn.Linear(2, 1), nn.Sigmoid()),
    ]


def test_toy_set_is_the_notebooks_rows_in_its_order():
    x, y = toy_arrays()
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert x.shape == (16, 4) and y.shape == (16, 1)
    assert x.tolist() == NOTEBOOK_X
    assert y.tolist() == NOTEBOOK_Y


def test_builtin_toy_dataset_serves_the_same_tensors():
    dataset = builtin(TOY_NAME)
    assert torch.equal(dataset.x, torch.tensor(NOTEBOOK_X))
    assert torch.equal(dataset.y, torch.tensor(NOTEBOOK_Y))


def test_first_segment_output_matches_what_the_notebook_printed():
    outputs = first_segment_outputs(load_config(ROOT / "examples" / "seed.toml"))
    assert outputs.shape == (16, 3)
    assert np.round(outputs[:15].double().numpy(), 4).tolist() == NOTEBOOK_FIRST_OUTPUTS
    assert np.round(outputs[15, :2].double().numpy(), 4).tolist() == NOTEBOOK_LAST_ROW_PREFIX


def notebook_training_state() -> dict[str, torch.Tensor]:
    """The notebook's job with its backward fixed, in one process: every owner trains 300
    full-batch epochs on the same 16 rows with the same five SGD optimizers, lr 0.2."""
    models = notebook_models()
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.2) for m in models]
    x, y = torch.tensor(NOTEBOOK_X), torch.tensor(NOTEBOOK_Y)
    model = nn.Sequential(*models)
    for _owner in ("alice", "bob", "claire"):
        for _epoch in range(300):
            for optimizer in optimizers:
                optimizer.zero_grad()
            loss = ((model(x) - y) ** 2).sum()
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
    return model.state_dict()
