"""Alias of :mod:`cnnjax.ops.xla_cpu` for the compile options (the module that holds them now)."""

from cnnjax.ops.xla_cpu import CPU_CONVOLUTIONS, compiler_options

__all__ = ["CPU_CONVOLUTIONS", "compiler_options"]
