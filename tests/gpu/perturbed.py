"""A test-only GDN decode backend that is deliberately wrong: our Triton kernel, then its output
scaled by PERTURB (an environment variable of the engine under test). The negative control of
the GPU engine tests: the comparison with vLLM must see it. Never registered outside tests
(`gdn_serve.bench.engine.EngineSpec.extra_backends`)."""

from __future__ import annotations

import os
from typing import Any

from gdn_serve.kernels import triton_decode
from gdn_serve.kernels.signature import DecodeArgs, PackedDecode

FACTOR_ENV = "GDN_TEST_PERTURB"


def _factor() -> float:
    return float(os.environ.get(FACTOR_ENV, "1.5"))


def decode(args: DecodeArgs) -> Any:
    result = triton_decode.gdn_decode(args)
    args.out.mul_(_factor())
    return result


def prepare(args: DecodeArgs) -> PackedDecode:
    kernel, factor = triton_decode.prepare_decode(args), _factor()

    def perturbed(call: DecodeArgs) -> Any:
        result = kernel(call)
        call.out.mul_(factor)
        return result

    return perturbed


warm = triton_decode.warm_decode
