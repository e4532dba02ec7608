"""The ops layer: everything an EAGer decode step computes, in one pass over the logits.

Each op has its plain-torch reference, its Triton kernel and its C++ kernel, one
dispatch and one set of argument checks:

- reference.py: the torch implementations, the oracle of every test and the "torch"
  backend;
- checks.py: the argument and value checks every backend shares;
- registry.py: the torch.library schemas, their fake (meta) twins, and the backend
  choice ("auto", "torch", "cpu", "triton");
- ops.py: the public functions (entropy, topk_logprobs, sample, eager_step);
- history.py: EntropyHistory, each prompt's record of entropies for the threshold;
- triton.py: the Triton kernels (CUDA, or the interpreter);
- cpu.py: the C++ kernels of the extension _C (csrc/), built at install time.

This layer imports nothing of the package above it (CONTRIBUTING.md, "Layers").
"""
