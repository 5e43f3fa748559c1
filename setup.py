"""ament_python package: built by colcon on ROS 2 machines, installed by pip elsewhere."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'bodycam_ros'
NODES = ('camera', 'imu', 'gps', 'holster', 'trigger_fusion', 'recorder', 'uploader',
         'live_view', 'dispatch_bridge')
OPTIONAL_NODES = ('portal_link',)   # bringup.OPTIONAL_NODES: started only with a portal URL

setup(
    name=PACKAGE,
    version='0.1.0',
    package_dir={'': 'src'},
    packages=find_packages('src'),
    package_data={PACKAGE: ['web/*', 'portal/web/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', glob('launch/*.launch.py')),
        (f'share/{PACKAGE}/config', glob('config/*.yaml')),
        (f'share/{PACKAGE}/gazebo/worlds', glob('gazebo/worlds/*.sdf')),
        (f'share/{PACKAGE}/gazebo/config', glob('gazebo/config/*.yaml')),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='bodycam_ros maintainers',
    maintainer_email='maintainers@bodycam-ros.org',
    description='Police body-worn camera as a ROS 2 node graph.',
    license='Apache-2.0',
    python_requires='>=3.10',
    entry_points={
        'console_scripts': [
            'bodycam = bodycam_ros.cli:main',
            *(f'{n}_node = bodycam_ros.nodes.{n}_node:main' for n in NODES + OPTIONAL_NODES),
            'composed_node = bodycam_ros.composed:main',   # several nodes in one process
        ],
    },
)
