"""Rotations and helpers shared by the evaluation tests."""

import math

import numpy as np

# The heads these tests build read the L2-normalised embedding, unstandardised (the config's
# default head reads the backbone features).
EMB = {"input": "embedding", "standardize": False}


def rz(deg):
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])


def ry(deg):
    t = math.radians(deg)
    return np.array([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]])


def rx(deg):
    t = math.radians(deg)
    return np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])


# Three hand-made cases: a 9 deg roll error, a 25 deg yaw error, a 55 deg pitch error.
R_TRUE = np.stack([np.eye(3), ry(25), rx(50)])


R_PRED = np.stack([rz(9), np.eye(3), rx(-5)])


def _z_angle(M):
    """Angle (deg) of M if it is a rotation about z, else None."""
    if abs(M[2, 2] - 1) > 1e-6 or np.abs(M[2, :2]).max() > 1e-6:
        return None
    return math.degrees(math.atan2(M[1, 0], M[0, 0]))


def _geo(A, B):
    return math.degrees(math.acos(np.clip((np.trace(A.T @ B) - 1) / 2, -1, 1)))
