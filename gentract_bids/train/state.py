"""Resumable training state without pickle: module and optimiser tensors in safetensors, scalars in JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict, dict]:
    """Split ``opt.state_dict()`` into flat tensors and a JSON-able remainder."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(opt: torch.optim.Optimizer, prefix: str, tensors: dict, meta: dict) -> None:
    state: dict = {}
    head = f"{prefix}."
    for name, value in tensors.items():
        if name.startswith(head):
            pid, key = name[len(head):].split(".", 1)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_state(path: Path, modules: dict, optimizers: dict, info: dict) -> Path:
    """Write ``path``.safetensors (weights + optimiser moments) and ``path``.json (the rest).

    The JSON is written last through an atomic rename: a state without its JSON is incomplete and
    is ignored by :func:`load_state`, so an interruption never leaves a state that half-loads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, meta = {}, {"info": info, "optimizers": {}}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"module.{name}.{key}"] = value.detach().cpu().contiguous().clone()
    for name, opt in optimizers.items():
        t, m = _optimizer_tensors(opt, f"optim.{name}")
        tensors.update(t)
        meta["optimizers"][name] = m
    tmp = path.with_suffix(".safetensors.partial")
    save_file(tensors, str(tmp))
    os.replace(tmp, path.with_suffix(".safetensors"))
    jtmp = path.with_suffix(".json.partial")
    jtmp.write_text(json.dumps(meta, indent=1))
    os.replace(jtmp, path.with_suffix(".json"))
    return path


def load_state(path: Path, modules: dict, optimizers: dict) -> dict | None:
    """Restore what :func:`save_state` wrote; returns its ``info`` or None when there is no state."""
    path = Path(path)
    if not path.with_suffix(".json").exists() or not path.with_suffix(".safetensors").exists():
        return None
    meta = json.loads(path.with_suffix(".json").read_text())
    tensors = load_file(str(path.with_suffix(".safetensors")))
    for name, module in modules.items():
        head = f"module.{name}."
        module.load_state_dict({k[len(head):]: v for k, v in tensors.items() if k.startswith(head)})
    for name, opt in optimizers.items():
        _restore_optimizer(opt, f"optim.{name}", tensors, meta["optimizers"][name])
    return meta["info"]
