"""Speed switches of the Mudjacking step: BatchNorm folding, memory layout, DDP, torch.compile.

- BatchNorm is frozen in eval mode while patching, so conv → BN is one affine map: a traced
  copy of each encoder (torch.fx, sharing the original's parameters) runs it as a single
  convolution with the BN scale multiplied into the weight at every forward, and its ReLUs
  in place. Gradients still reach the conv weights (through the product), the optimiser and
  checkpoints keep working on the original module. In resnet20's step, BN forward and
  backward took ~20 % of the time; an encoder fx cannot trace runs unfolded.
- channels_last weights for both encoders: the convolutions then run in NHWC (oneDNN on
  the CPU, cuDNN on CUDA); inputs follow the weights' layout. For resnet20 on 536 views
  this took a forward+backward step from 7.6-9.0 s to 5.6-6.0 s on 2 busy CPU cores.
- bf16 autocast and pinned, non-blocking copies on CUDA come from mudjack.device.
- `compile: true` compiles the patched encoder's forward (after the DDP wrapper, as
  torch.compile recommends) and the frozen one's; the first steps pay the compile time.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from mudjack.patching.distributed import Distributed, wrap


def channels_last(*modules: nn.Module) -> None:
    """Store every 4-D weight of the modules in NHWC order, in place."""
    for module in modules:
        module.to(memory_format=torch.channels_last)


def contiguous(module: nn.Module) -> nn.Module:
    """Back to the default layout (what callers of the result expect), in place."""
    return module.to(memory_format=torch.contiguous_format)


class FoldedConv(nn.Module):
    """A convolution followed by an eval-mode BatchNorm, run as one convolution."""

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv, self.norm = conv, norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm, conv = self.norm, self.conv
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale
        if norm.bias is not None:
            shift = shift + norm.bias
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        return conv._conv_forward(x, conv.weight * scale.view(-1, 1, 1, 1), shift)


def _module(node: fx.Node, modules: dict[str, nn.Module], kind: type) -> nn.Module | None:
    if node.op == "call_module" and isinstance(modules.get(node.target), kind):
        return modules[node.target]
    return None


def _fold_pairs(graph_module: fx.GraphModule) -> None:
    """Replace every conv node whose only user is an eval-mode BatchNorm by a FoldedConv."""
    modules, graph = dict(graph_module.named_modules()), graph_module.graph
    for node in list(graph.nodes):
        norm = _module(node, modules, nn.BatchNorm2d)
        source = node.args[0] if node.args else None
        conv = _module(source, modules, nn.Conv2d) if isinstance(source, fx.Node) else None
        if norm is None or conv is None or norm.training or norm.running_var is None \
                or len(source.users) != 1:
            continue
        name = f"folded_{node.name}"
        graph_module.add_submodule(name, FoldedConv(conv, norm))
        with graph.inserting_before(node):
            folded = graph.call_module(name, source.args, source.kwargs)
        node.replace_all_uses_with(folded)
        graph.erase_node(node)
        graph.erase_node(source)


def _relu_in_place(graph_module: fx.GraphModule) -> None:
    """ReLUs of a folded conv's or a sum's output, its only use, overwrite it (no autograd need)."""
    modules, graph = dict(graph_module.named_modules()), graph_module.graph
    for node in list(graph.nodes):
        relu = (node.op == "call_function" and node.target in (F.relu, torch.relu)) \
            or _module(node, modules, nn.ReLU) is not None
        source = node.args[0] if relu and node.args else None
        if not isinstance(source, fx.Node) or len(source.users) != 1:
            continue
        if not (_module(source, modules, FoldedConv) is not None
                or (source.op == "call_function" and source.target in (operator.add, torch.add))):
            continue
        with graph.inserting_before(node):
            node.replace_all_uses_with(graph.call_function(torch.relu_, (source,)))
        graph.erase_node(node)


def fold_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """A traced copy of `module` sharing its parameters, conv → BN folded, ReLUs in place;
    `module` itself when torch.fx cannot trace it."""
    try:
        graph_module = fx.symbolic_trace(module)
    except Exception:  # an untraceable encoder runs as it is
        return module
    _fold_pairs(graph_module)
    _relu_in_place(graph_module)
    graph_module.graph.lint()
    graph_module.recompile()
    return graph_module


def prepare_models(patched: nn.Module, frozen: nn.Module, *, compile_models: bool,
                   context: Distributed | None, nhwc: bool = True) -> tuple[nn.Module, nn.Module]:
    """(forward of h', forward of h) for the step; `patched` stays the module to save.
    `nhwc`: channels_last weights (the adapter's `channels_last`)."""
    if nhwc:
        channels_last(patched, frozen)
    forward = wrap(fold_frozen_batchnorm(patched), context)
    frozen = fold_frozen_batchnorm(frozen)
    if compile_models:
        return torch.compile(forward), torch.compile(frozen)
    return forward, frozen
