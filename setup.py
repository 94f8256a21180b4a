"""The C extension of the online read (skewless/serving/read_kernel.c); everything else is in pyproject.toml.

Built by ``pip install -e .`` (infra/setup.sh) or, in a checkout, ``python setup.py build_ext --inplace``. Optional: if it
cannot be built, the compiled Python evaluation serves (skewless/serving/compiled.py logs it once)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("skewless.serving.read_kernel", ["skewless/serving/read_kernel.c"],
                             extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                                 "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
                             optional=True)])
