"""Write the hyperloom 0.1 checkpoints that tests/test_checkpoint.py loads (format 1).

Run with hyperloom 0.1 (commit 6a8f038) first on the path, from the repository root::

    git worktree add ../v01 6a8f038
    PYTHONPATH=../v01/src .venv/bin/python tests/data/v01/make_fixtures.py
    git worktree remove ../v01

Each ``NAME.safetensors`` is a checkpoint that 0.1's ``hl.save`` wrote; ``NAME.expected`` holds
the inputs and the outputs that 0.1 computed from it (``x``, ``y.<task>``; ``z``, ``y.z``, ...).
"""

from pathlib import Path

import torch
from safetensors.torch import save_file

import hyperloom as hl
from hyperloom import targets  # 0.1's module (hl.networks today)

HERE = Path(__file__).parent


def write(name, hnet, expected):
    if hl.__version__ != "0.1.0":
        raise SystemExit(f"run this with hyperloom 0.1 on the path, not {hl.__version__}")
    hl.save(hnet, HERE / f"{name}.safetensors", tasks=expected.pop("tasks", None))
    save_file(
        {k: v.contiguous() for k, v in expected.items()}, str(HERE / f"{name}.expected.safetensors")
    )


def task_outputs(hnet, x, num):
    with torch.no_grad():
        return {f"y.{t}": hnet(x, task=t) for t in range(num)} | {
            "y.ids": hnet(x, task=torch.arange(x.shape[0]) % num)
        }


def main():
    torch.manual_seed(0)
    mlp = dict(in_features=6, hidden=[5], out_features=3)
    x = torch.randn(4, 6)

    hnet = hl.HyperNetwork(
        targets.build_target("mlp", **mlp), hl.TaskEmbedding(3, 4), hl.FlatGenerator(hidden=(8,))
    )
    write("mlp_flat", hnet, {"x": x, "tasks": ["a", "b", "c"], **task_outputs(hnet, x, 3)})

    gen = hl.ChunkedGenerator(chunk_size=16, chunk_dim=3, hidden=(8,))
    hnet = hl.HyperNetwork(targets.build_target("mlp", **mlp), hl.TaskEmbedding(2, 4), gen)
    write("mlp_chunked", hnet, {"x": x, **task_outputs(hnet, x, 2)})

    hnet = hl.HyperNetwork(
        targets.build_target("mlp", **mlp),
        hl.Noise(4, std=0.5, seed=7),
        hl.HeadsGenerator(hidden=(8,)),
    )
    z = torch.randn(4)
    zs = torch.randn(4, 4)
    with torch.no_grad():
        write(
            "mlp_noise",
            hnet,
            {"x": x, "z": z, "y.z": hnet(x, z=z), "zs": zs, "y.zs": hnet(x, z=zs)},
        )

    gen = hl.ChunkedGenerator(chunk_size=512, chunk_dim=2, hidden=(4,))
    hnet = hl.HyperNetwork(
        targets.build_target("lenet", in_channels=1, image_size=16, num_classes=3),
        hl.TaskEmbedding(2, 3),
        gen,
    )
    xi = torch.randn(2, 1, 16, 16)
    write("lenet_chunked", hnet, {"x": xi, **task_outputs(hnet, xi, 2)})


if __name__ == "__main__":
    main()
