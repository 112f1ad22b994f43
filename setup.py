"""The build's one step beyond pyproject.toml: the wheel carries the browser client.

`clients/js/` is laid out as an npm package of its own; an installed relay serves it from
`relay/sdk/` (`relay.web.assets.client_folder`), so the build copies it there. A checkout (an
editable install) serves the folder itself.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CLIENT = Path("clients", "js")
CLIENT_FILES = ("byok-relay.js", "byok-relay.d.ts")


class BuildWithClient(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib, "relay", "sdk")
        self.mkpath(str(target))
        for name in CLIENT_FILES:
            self.copy_file(str(CLIENT / name), str(target / name))


setup(cmdclass={"build_py": BuildWithClient})
