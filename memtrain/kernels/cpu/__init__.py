"""memtrain's fused CPU kernels (numba): the CPU twin of the CUDA kernels.

One update function per optimizer and one fused bias + activation forward /
activation backward per activation, like memtrain/kernels/{optim,activation}.py
for the GPU: each element is read and written once, so the CPU plan needs no
optimizer chunk scratch and no activation scratch (memory/plan.py). The NumPy
code in memtrain/optim and memtrain/nn/activations.py stays the reference these
kernels are tested against (tests/test_cpu_kernels.py).

Importing this package imports nothing heavy; numba is imported by the modules
below it, which the trainer loads only when it builds a fused CPU step.
"""
