"""Trigger detectors: pure, streaming, clock-free (the caller stamps every sample).

One module per source. The ``trigger_fusion`` node and ``bodycam eval`` feed the same
classes in the same order, so the accuracy measured on recordings is the node's accuracy.
"""
from bodycam_ros.core.detectors.base import DetectorError, Source, TriggerState
from bodycam_ros.core.detectors.dispatch_proximity import (ONE_MILE_M, Crossing,
                                                           DispatchProximity, Fix)
from bodycam_ros.core.detectors.fight import Fight, FightParams
from bodycam_ros.core.detectors.foot_pursuit import FootPursuit, FootPursuitParams
from bodycam_ros.core.detectors.manual import Manual
from bodycam_ros.core.detectors.officer_down import (DownEvent, DownEventKind, DownPhase,
                                                     OfficerDown, OfficerDownParams)
from bodycam_ros.core.detectors.weapon_drawn import WeaponDrawn

__all__ = ['ONE_MILE_M', 'Crossing', 'DetectorError', 'DispatchProximity', 'DownEvent',
           'DownEventKind', 'DownPhase', 'Fight', 'FightParams', 'Fix', 'FootPursuit',
           'FootPursuitParams', 'Manual', 'OfficerDown', 'OfficerDownParams', 'Source',
           'TriggerState', 'WeaponDrawn']
