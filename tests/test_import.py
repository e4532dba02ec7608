"""Importing the package is cheap: no triton import, no CUDA initialisation, no compile."""
import subprocess
import sys


def test_import_is_lean():
    code = (
        "import sys, time; t = time.time(); import eager_kernels, torch; "
        "assert 'triton' not in sys.modules, 'triton imported at package import'; "
        "assert not torch.cuda.is_initialized(); "
        "assert 'eager_kernels.hf' not in sys.modules and 'transformers' not in sys.modules; "
        "print(time.time() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_missing_extension_falls_back_with_one_warning():
    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    import eager_kernels as ek\n"
        "    x = torch.randn(2, 10)\n"
        "    ek.entropy(x); ek.entropy(x)\n"
        "msgs = [str(m.message) for m in w if 'C++ CPU extension' in str(m.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert not ek.cpu_extension_available()\n"
        "try:\n"
        "    ek.entropy(x, backend='cpu')\n"
        "except RuntimeError as e:\n"
        "    assert 'not available' in str(e)\n"
        "else:\n"
        "    raise AssertionError('backend=cpu without the extension must raise')\n"
    )
    import os

    env = dict(os.environ, EAGER_KERNELS_DISABLE_CPP="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
