"""Forward and adjoint drivers, gradients, mapping and smoothing."""
