"""The compiled path's switches, without compiling anything: when it is wanted, and which calls
take the compiled graph."""

from __future__ import annotations

import torch

from pipelines.warmup import ShapeRouted, compile_wanted


def test_compile_is_for_cuda_unless_asked_for():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert compile_wanted("auto", cuda) and not compile_wanted("auto", cpu)
    assert compile_wanted("on", cpu)
    assert not compile_wanted("off", cuda)


def test_only_warmed_shapes_take_the_compiled_graph_and_never_with_loras():
    calls, loras = [], {}
    route = ShapeRouted(lambda x: calls.append("eager"), lambda x: calls.append("compiled"), lambda: bool(loras))
    route.learning = True
    route(torch.zeros(2, 4, 8, 8))  # warm-up: compiles this shape
    route.learning = False
    route(torch.zeros(2, 4, 8, 8))
    route(torch.zeros(4, 4, 8, 8))  # a batch size warm-up never saw: eager, no compile stall mid-job
    loras["detail"] = "detail.safetensors"
    route(torch.zeros(2, 4, 8, 8))  # adapters change the module under the graph
    assert calls == ["compiled", "compiled", "eager", "eager"]
