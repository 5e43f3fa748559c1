"""The ROS 2 path cannot rot: colcon builds the package into a real install space.

package.xml must satisfy catkin_pkg (or colcon silently builds a plain Python package with no
ament index entry), console scripts must land in lib/bodycam_ros for `ros2 run`, and launch/
and config/ in share/ for `ros2 launch`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bodycam_ros import bringup
from conftest import ROOT


@pytest.fixture(scope='module')
def install_space(tmp_path_factory) -> Path:
    colcon = shutil.which('colcon', path=str(Path(sys.executable).parent))
    if colcon is None:
        pytest.skip('colcon is not installed (requirements-test.txt installs it)')
    work = tmp_path_factory.mktemp('colcon')
    env = {**os.environ, 'AMENT_PREFIX_PATH': sys.prefix,
           'PATH': f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}'}
    result = subprocess.run(
        [colcon, '--log-base', str(work / 'log'), 'build', '--base-paths', str(ROOT),
         '--build-base', str(work / 'build'), '--install-base', str(work / 'install')],
        cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return work / 'install' / 'bodycam_ros'


def test_colcon_install_has_ament_index_entry(install_space: Path):
    assert (install_space / 'share/ament_index/resource_index/packages/bodycam_ros').is_file()
    assert (install_space / 'share/bodycam_ros/package.xml').is_file()


def test_colcon_install_has_an_executable_per_node(install_space: Path):
    lib = install_space / 'lib' / 'bodycam_ros'
    for name in bringup.NODES:
        assert os.access(lib / f'{name}_node', os.X_OK), f'{name}_node missing from {lib}'
    assert os.access(lib / 'bodycam', os.X_OK)


def test_colcon_install_has_launch_and_config(install_space: Path):
    share = install_space / 'share' / 'bodycam_ros'
    assert {p.name for p in (share / 'launch').glob('*.launch.py')} == \
        {p.name for p in (ROOT / 'launch').glob('*.launch.py')}   # every one is installed
    assert (share / 'config' / 'sim.yaml').is_file()


def test_installed_package_finds_its_share_dir_through_the_ament_index(install_space: Path):
    site = next(install_space.glob('lib/python3*/site-packages'))
    env = {**os.environ, 'AMENT_PREFIX_PATH': f'{install_space}{os.pathsep}{sys.prefix}',
           'PYTHONPATH': str(site)}
    out = subprocess.run([sys.executable, '-c',
                          'from bodycam_ros.paths import config_file; print(config_file("sim.yaml"))'],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(install_space / 'share' / 'bodycam_ros' / 'config' / 'sim.yaml')
