"""The package as a user meets it: CLI, share files, launch files, parameter validation."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bodycam_ros import bringup
from conftest import ROOT


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, '-m', 'bodycam_ros.cli', '--help'],
                         capture_output=True, text=True, check=True).stdout
    for command in ('run', 'verify', 'upload', 'eval', 'trigger'):
        assert command in out


def test_setup_declares_a_console_script_per_node():
    setup_py = (ROOT / 'setup.py').read_text()
    tree = ast.parse(setup_py)
    nodes = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                 and any(getattr(t, 'id', '') == 'NODES' for t in n.targets))
    assert tuple(ast.literal_eval(nodes)) == bringup.NODES


@pytest.mark.parametrize('launch_file', sorted((ROOT / 'launch').glob('*.launch.py')))
def test_launch_file_names_real_executables_and_config(launch_file: Path):
    """Statically (launch_ros has no wheel here): every executable and config file exists."""
    text = launch_file.read_text()
    found = re.search(r"graph\('([^']+)'", text)
    assert found, f'{launch_file.name} brings the unit up through launch_graph.graph(config)'
    config = found.group(1)
    assert (ROOT / 'config' / config).is_file()
    for name in bringup.NODES:
        module = ROOT / 'src' / 'bodycam_ros' / 'nodes' / f'{name}_node.py'
        assert module.is_file(), f'{launch_file.name} launches {name}_node but {module} is missing'
        assert 'def main(' in module.read_text()


def test_launch_file_loads_under_launch_ros_when_present():
    launch = pytest.importorskip('launch')
    pytest.importorskip('launch_ros')
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    src = PythonLaunchDescriptionSource(str(ROOT / 'launch' / 'sim.launch.py'))
    assert isinstance(src.try_get_launch_description_without_context(), launch.LaunchDescription)


def test_every_config_section_names_a_node():
    import yaml
    for cfg in (ROOT / 'config').glob('*.yaml'):
        data = yaml.safe_load(cfg.read_text())
        names = {key.rsplit('/', 1)[-1] for key in data} - {'**'}   # '/**': every node
        assert names <= set(bringup.NODES), f'{cfg.name}: unknown sections {names - set(bringup.NODES)}'
        assert all('ros__parameters' in v for v in data.values())
