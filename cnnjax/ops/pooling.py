"""Pooling ops (work in progress)."""

from __future__ import annotations


def max_pool(x, window, stride=None, padding=0, dilation=1, ceil_mode=False, *, impl="custom"):
    raise NotImplementedError


def avg_pool(x, window, stride=None, padding=0, ceil_mode=False, count_include_pad=True, *, impl="custom"):
    raise NotImplementedError


def lp_pool(x, p, window, stride=None, ceil_mode=False, *, impl="custom"):
    raise NotImplementedError


def global_avg_pool(x, keepdims=False, *, impl="custom"):
    raise NotImplementedError


def global_max_pool(x, keepdims=False, *, impl="custom"):
    raise NotImplementedError
