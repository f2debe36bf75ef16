"""Build step that ships the studies: notebooks/ and params/ go into the wheel as lotterylab/study_files/.

They stay at the repository root, where README, DESIGN, the tests and `lotterylab study --params params/...` name
them, so they belong to no package and setuptools' package-data cannot reach them (it only takes files inside a
package folder; data-files would scatter them under the environment's prefix, where no code looks). build_py runs for
every wheel, whether pip builds it from the checkout or from the sdist (MANIFEST.in puts both folders there), so it
copies them into the build tree next to the modules. `lotterylab.studies.catalog` reads the checkout when it runs from one,
and this copy otherwise. An editable install runs from the checkout and needs no copy.
Everything else about the package is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = {"notebooks": "*.ipynb", "params": "**/*.yaml"}  # folder: what of it a study reads


class BuildPyWithStudies(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "lotterylab" / "study_files"
        shutil.rmtree(target, ignore_errors=True)  # a removed notebook must not linger from an earlier build
        for folder, pattern in SHIPPED.items():
            for source in sorted((HERE / folder).glob(pattern)):
                if ".ipynb_checkpoints" not in source.parts:
                    destination = target / source.relative_to(HERE)
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, destination)


setup(cmdclass={"build_py": BuildPyWithStudies})
