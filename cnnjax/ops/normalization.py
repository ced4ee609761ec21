"""Normalisation ops (work in progress)."""

from __future__ import annotations


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0, *, impl="custom"):
    raise NotImplementedError


def local_contrast_norm(x, size=9, sigma=None, *, eps=1e-6, impl="custom"):
    raise NotImplementedError
