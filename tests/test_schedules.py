"""Tests for magvit_jax.masking.schedules."""

import numpy as np
import pytest

import jax.numpy as jnp

from magvit_jax.masking import schedules

CONCAVE = ('cosine', 'square', 'cubic', 'exp')
CONVEX = ('sqrt', 'log')


def test_names():
  assert schedules.SCHEDULES == ('linear', 'cosine', 'square', 'cubic', 'sqrt', 'log', 'exp')


@pytest.mark.parametrize('name', schedules.SCHEDULES)
def test_endpoints(name):
  gamma = schedules.get_schedule(name)
  assert float(gamma(jnp.float32(0.0))) == 1.0
  assert abs(float(gamma(jnp.float32(1.0)))) <= 1e-6
  # Integer input is promoted to float.
  assert float(gamma(jnp.array(0))) == 1.0
  assert abs(float(gamma(jnp.array(1)))) <= 1e-6


@pytest.mark.parametrize('name', schedules.SCHEDULES)
def test_monotone_and_range(name):
  gamma = schedules.get_schedule(name)
  r = jnp.linspace(0.0, 1.0, 10001, dtype=jnp.float32)
  g = np.asarray(gamma(r))
  assert g.shape == r.shape and g.dtype == np.float32
  assert np.all(g >= 0.0) and np.all(g <= 1.0)
  assert np.all(np.diff(g) <= 0.0)
  # Strictly decreasing overall (not a constant function).
  assert g[0] - g[-1] > 0.99


@pytest.mark.parametrize('name', schedules.SCHEDULES)
def test_any_shape(name):
  gamma = schedules.get_schedule(name)
  r = jnp.full((2, 3, 4), 0.5, jnp.float32)
  assert gamma(r).shape == (2, 3, 4)


@pytest.mark.parametrize('name', CONCAVE)
def test_concave_above_linear(name):
  r = np.linspace(0.0, 1.0, 1001, dtype=np.float32)[1:-1]
  g = np.asarray(schedules.get_schedule(name)(jnp.asarray(r)))
  assert np.all(g >= (1.0 - r) - 1e-6)


@pytest.mark.parametrize('name', CONVEX)
def test_convex_below_linear(name):
  r = np.linspace(0.0, 1.0, 1001, dtype=np.float32)[1:-1]
  g = np.asarray(schedules.get_schedule(name)(jnp.asarray(r)))
  assert np.all(g <= (1.0 - r) + 1e-6)


def test_known_values():
  r = jnp.float32(0.5)
  get = schedules.get_schedule
  np.testing.assert_allclose(get('linear')(r), 0.5, atol=1e-6)
  np.testing.assert_allclose(get('cosine')(r), np.cos(np.pi / 4), atol=1e-6)
  np.testing.assert_allclose(get('square')(r), 0.75, atol=1e-6)
  np.testing.assert_allclose(get('cubic')(r), 0.875, atol=1e-6)
  np.testing.assert_allclose(get('sqrt')(r), 1 - np.sqrt(0.5), atol=1e-6)
  np.testing.assert_allclose(get('log')(r), 1 - np.log1p(127.5) / np.log1p(255), atol=1e-6)
  np.testing.assert_allclose(get('exp')(r), (1 - 2.0**-4) / (1 - 2.0**-8), atol=1e-6)


def test_unknown_name():
  with pytest.raises(ValueError, match="'bogus'.*linear.*cosine.*exp"):
    schedules.get_schedule('bogus')
