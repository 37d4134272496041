"""Build the optional C part of cellcut (everything else is in pyproject.toml).

``cellcut.losses._affinity`` is the soft N-cut's offset loop in C. It is optional: where no C
compiler is found the build goes on without it and the loss runs its PyTorch code instead
(``cellcut.losses.ncut.native_status()`` says which; ``cellcut train`` prints a note then).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    """Adds flags the compiler understands: optimise, vectorise `omp simd` loops, no errno."""

    def build_extensions(self):
        if self.compiler.compiler_type == "unix":
            for ext in self.extensions:
                ext.extra_compile_args += ["-O3", "-fopenmp-simd", "-fno-math-errno"]
                ext.extra_link_args += ["-pthread"]
        super().build_extensions()


setup(
    ext_modules=[
        Extension(
            "cellcut.losses._affinity",
            sources=["src/cellcut/losses/_affinity.c"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
